"""A non-editable install puts only `byzbn` into site-packages (kernels/attacks/defenses nest inside it)."""
import importlib.metadata as md
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _installed_distribution():
    # An in-tree build leaves byzbn.egg-info in the checkout, which is on sys.path during the tests:
    # look only at distributions installed elsewhere (site-packages).
    installed = [d for d in md.distributions(name="byzbn") if Path(d.locate_file("")).resolve() != REPO]
    if not installed:
        pytest.skip("byzbn is not installed (tests run from the source tree only)")
    dist = installed[0]
    direct_url = dist.read_text("direct_url.json")
    if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
        pytest.skip("byzbn is installed in editable mode; .ci/run checks the non-editable install")
    return dist


def test_non_editable_install_adds_only_byzbn_to_site_packages():
    dist = _installed_distribution()
    top_level = {p.parts[0] for p in dist.files if p.parts[0] != ".." and not p.parts[0].endswith(".dist-info")}
    top_level.discard("__pycache__")
    assert top_level == {"byzbn"}
    assert not any(str(p).endswith(".npz") for p in dist.files)  # data/cifar10_subset.npz stays in the repository
    installed = {str(p) for p in dist.files}
    for sub in ("kernels", "attacks", "defenses", "cli", "runs", "grid", "grid/presets", "grid/claims", "data", "fl",
                "nn", "schemes"):
        assert f"byzbn/{sub}/__init__.py" in installed
    # The sweep presets are package data: `python -m byzbn.sweep --preset NAME` needs them installed.
    from byzbn.grid.presets import preset_names

    for name in ("fig3", "fig4", "breakdown", "heatmap", "fixbn", "fedtan", "hbn", "schemes-under-attack"):
        assert f"byzbn/grid/presets/{name}.toml" in installed
        assert name in preset_names()


def test_every_package_of_the_source_tree_is_listed_for_installation():
    # setuptools installs only the packages pyproject.toml names: a subpackage left out installs broken.
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, folder in setuptools["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            found.add(".".join([package, *init.parent.relative_to(REPO / folder).parts]))
    assert found == set(setuptools["packages"])


def test_subpackages_import_under_byzbn():
    import byzbn.attacks
    import byzbn.defenses
    import byzbn.kernels

    assert byzbn.kernels.__name__ == "byzbn.kernels"
    assert callable(byzbn.attacks.make_attack) and callable(byzbn.defenses.make_defense)
