//! Secret references in job specs: `${env:NAME}` and `${file:/path}` stand for a value
//! kept outside the spec, resolved only where a Kafka client is created (driver and
//! executors), so specs, the job log, logs and status never hold the secret itself.

/// The value `value` stands for: a reference resolved from the environment or a file
/// (without its trailing newline), anything else as written. The error names what is
/// missing.
pub fn resolve(value: &str) -> Result<String, String> {
    match reference(value)? {
        None => Ok(value.to_string()),
        Some(Reference::Env(name)) => {
            std::env::var(name).map_err(|_| format!("the environment variable {name} is not set"))
        }
        Some(Reference::File(path)) => std::fs::read_to_string(path)
            .map(|text| text.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("cannot read the secret file {path}: {e}")),
    }
}

/// Whether `value` is a secret reference (well-formed or not).
pub fn is_reference(value: &str) -> bool {
    value.starts_with("${")
}

/// Checks a reference's syntax without resolving it.
pub fn check(value: &str) -> Result<(), String> {
    reference(value).map(|_| ())
}

enum Reference<'a> {
    Env(&'a str),
    File(&'a str),
}

fn reference(value: &str) -> Result<Option<Reference<'_>>, String> {
    if !is_reference(value) {
        return Ok(None);
    }
    let inner = value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .ok_or_else(|| {
            format!("{value:?} is not a reference; write ${{env:NAME}} or ${{file:/path}}")
        })?;
    match inner.split_once(':') {
        Some(("env", name)) if !name.is_empty() => Ok(Some(Reference::Env(name))),
        Some(("file", path)) if !path.is_empty() => Ok(Some(Reference::File(path))),
        _ => Err(format!(
            "{value:?} is not a reference; write ${{env:NAME}} or ${{file:/path}}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_from_the_environment_and_files() {
        std::env::set_var("SLUICE_TEST_SECRET", "s3cr3t");
        assert_eq!(resolve("${env:SLUICE_TEST_SECRET}").unwrap(), "s3cr3t");
        assert_eq!(resolve("plain").unwrap(), "plain");
        let dir = std::env::temp_dir().join(format!("sluice-secret-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let file = format!("${{file:{}}}", dir.display());
        assert_eq!(resolve(&file).unwrap(), "from-file");
        std::fs::remove_file(&dir).unwrap();
        let missing = resolve("${env:SLUICE_TEST_NOT_SET}").unwrap_err();
        assert!(missing.contains("SLUICE_TEST_NOT_SET"), "{missing}");
        assert!(resolve(&file).unwrap_err().contains("cannot read"));
        for bad in ["${vault:x}", "${env:}", "${env:X"] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert!(check("${file:/etc/x}").is_ok());
    }
}
