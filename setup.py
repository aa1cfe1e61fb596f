"""katclient: a Tornado-based KATCP inspecting client suite."""

from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="katclient",
    version="0.1.0",
    description="Tornado-based KATCP inspecting client, device server and virtual devices",
    long_description=long_description,
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["katclient", "katclient.*", "fake_servers", "fake_servers.*"]),
    package_data={"katclient": ["py.typed"]},
    install_requires=["tornado>=6.1,<7", "ply>=3.11"],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "async-solipsism>=0.5",
            "pytest-asyncio>=0.23",
            "aiokatcp>=2.0",
            # The real PyOpticon socket client, tested against our fake dashboard
            # (its socket_client.py is loaded by path: no Tk needed).
            "pyopticon>=0.2",
            # The console facade is tested inside an IPython session (top-level await).
            "ipython>=8",
            # The manual is built (warning-free) by the test suite: its examples are tests too.
            "sphinx>=7",
        ],
        "bench": ["aiokatcp>=2.0", "psutil>=5"],
        # autodoc imports katclient.testing, which needs pytest.
        "doc": ["sphinx>=7", "pytest>=7"],
        "lint": ["ruff>=0.4", "mypy>=1.8"],
    },
    entry_points={
        "console_scripts": ["katclient = katclient.cli:main"],
        "pytest11": ["katclient = katclient.testing"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Tornado",
        "Topic :: Scientific/Engineering :: Astronomy",
        "License :: OSI Approved :: BSD License",
    ],
)
