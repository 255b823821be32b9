"Packaging: environment.yml pins what pyproject.toml pins, and Binder uses it."
import re, subprocess, sys, tomllib
from pathlib import Path
from conftest import ROOT

def test_environment_yml_pins_the_same_versions():
    project = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    wanted = set(project['dependencies']) | set(project['optional-dependencies']['dev'])
    pinned = {m.group(1) for m in re.finditer(r'^\s+- ([A-Za-z0-9_.\-\[\]]+==[^\s#]+)', (ROOT/'environment.yml').read_text(), re.M)}
    assert pinned == wanted
    assert (ROOT/'binder'/'environment.yml').resolve() == (ROOT/'environment.yml').resolve()
