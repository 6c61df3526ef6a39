"""The trainers of progvc's two stages (tokenizer, context model) and the loop they share (common)."""
