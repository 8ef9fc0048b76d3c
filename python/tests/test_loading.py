"""How the package finds the library, and what it says when it cannot."""

import shutil
import tempfile
import unittest
from pathlib import Path

from support import PYTHON_DIR, ROOT, run_script, tokio_bridge as tb

REPORT = """
try:
    import tokio_bridge
except ImportError as error:
    print(type(error).__name__, "|", error)
else:
    print("loaded |", tokio_bridge.library_path)
"""


class FindingTheLibrary(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="tb-loading-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def load(self, **env):
        process, _ = run_script(REPORT, **env)
        self.assertEqual(process.returncode, 0, process.stderr)
        kind, _, text = process.stdout.partition(" | ")
        return kind, text.strip()

    def package_copy(self, with_library: bool) -> Path:
        """The package alone in a directory outside any checkout."""
        shutil.copytree(PYTHON_DIR / "tokio_bridge", self.tmp / "tokio_bridge")
        if with_library:
            shutil.copy(tb.library_path, self.tmp / "tokio_bridge" / "libtokio_bridge.so")
        return self.tmp

    def test_the_environment_variable_comes_first(self):
        chosen = self.tmp / "chosen.so"
        shutil.copy(tb.library_path, chosen)
        kind, path = self.load(TOKIO_BRIDGE_LIB=str(chosen))
        self.assertEqual((kind, path), ("loaded", str(chosen)))

    def test_a_wrong_environment_variable_is_named(self):
        missing = str(self.tmp / "nowhere.so")
        kind, message = self.load(TOKIO_BRIDGE_LIB=missing)
        self.assertEqual(kind, "LibraryNotFound")
        self.assertIn(f"TOKIO_BRIDGE_LIB is set to {missing!r}, which is not a file", message)
        self.assertIn("cargo build --release", message)

    def test_a_library_next_to_the_package_is_found(self):
        home = self.package_copy(with_library=True)
        kind, path = self.load(TOKIO_BRIDGE_LIB=None, PYTHONPATH=str(home))
        self.assertEqual(kind, "loaded")
        self.assertEqual(Path(path), home / "tokio_bridge" / "libtokio_bridge.so")

    def test_without_any_library_the_error_says_what_to_do(self):
        home = self.package_copy(with_library=False)
        kind, message = self.load(TOKIO_BRIDGE_LIB=None, PYTHONPATH=str(home))
        self.assertEqual(kind, "LibraryNotFound", "an ImportError")
        self.assertIn("TOKIO_BRIDGE_LIB is not set", message)
        self.assertIn(str(home / "tokio_bridge" / "libtokio_bridge.so"), message)
        self.assertIn("cargo build --release", message)
        self.assertIn("set TOKIO_BRIDGE_LIB to the full path of libtokio_bridge.so", message)

    def test_a_checkout_uses_its_own_build(self):
        builds = [ROOT / "target" / p / "libtokio_bridge.so" for p in ("release", "debug")]
        built = [b for b in builds if b.is_file()]
        if not built:
            self.skipTest("neither target/release nor target/debug has the library")
        kind, path = self.load(TOKIO_BRIDGE_LIB=None)
        self.assertEqual((kind, Path(path)), ("loaded", built[0]))


if __name__ == "__main__":
    unittest.main()
