"""The progvc codec: container, entropy coding, encoder, decoder and command line."""
