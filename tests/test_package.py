"""The package (src/widenet/__init__.py): what `import widenet` makes reachable."""


def test_every_subpackage_is_an_attribute_after_import_widenet():
    import subprocess
    import sys

    code = ("import widenet as wn; mods = [wn.predict, wn.empirical, wn.theory, wn.blocked, wn.estimators, "
            "wn.datasets]; print(' '.join(m.__name__ for m in mods))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["widenet.predict", "widenet.empirical", "widenet.theory", "widenet.blocked",
                                   "widenet.estimators", "widenet.datasets"]
