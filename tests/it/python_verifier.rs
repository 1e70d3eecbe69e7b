//! Cross-checks the format specification with an independent implementation: runs
//! `tools/python/test_vectors.py`, which drives `tools/python/portcullis_verify.py` (a verifier
//! written from `schemas/FORMAT.md` alone, Python standard library only) over the checked-in
//! vectors of `schemas/testdata/` and the worked examples of FORMAT.md, and fails on any verdict
//! that differs from `schemas/testdata/verdicts.json`.

use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;

#[test]
fn independent_python_verifier_agrees_on_the_vectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tools").join("python").join("test_vectors.py");
    assert!(script.is_file(), "missing {}", script.display());

    let output =
        match Command::new("python3").arg(&script).current_dir(root).env("PYTHONDONTWRITEBYTECODE", "1").output() {
            Ok(output) => output,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "python3 was not found on PATH: it is needed to run the independent Python verifier \
             ({}); install Python 3.11 or later",
                script.display()
            ),
            Err(e) => panic!("could not start python3 {}: {e}", script.display()),
        };

    assert!(
        output.status.success(),
        "the independent Python verifier disagrees with the vectors ({}): python3 {}\n\
         --- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        script.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}
