//! Settings a restore appends to the copy's `postgresql.auto.conf` after
//! its own, as pgBackRest's `--recovery-option` does: a copy that must
//! listen on another port than its original, or start with a feature off
//! until it has been pointed at its new peers (a Citus cluster restored
//! onto new ports).
//!
//! A name follows PostgreSQL's configuration grammar (`name` or
//! `prefix.name`, letters, digits and `_`); a name twice, or one of the
//! settings restore writes itself (`restore_command`,
//! `recovery_end_command`, `recovery_target*`,
//! `allow_in_place_tablespaces`), is refused: a second line would win over
//! the restore's own without a word. A value must fit in a configuration
//! file (no line break or other control character); it is always written
//! quoted.

use std::collections::BTreeSet;

use super::conf_file::quote_value;
use super::rebuild::RestoreError;

/// Names restore writes itself, and the prefix of the recovery targets.
const RESTORE_OWN: [&str; 3] = [
    "restore_command",
    "recovery_end_command",
    "allow_in_place_tablespaces",
];
const RECOVERY_TARGET_PREFIX: &str = "recovery_target";

/// Every setting can be written after the restore's own, or the first
/// one that cannot and why.
pub fn check(settings: &[(String, String)]) -> Result<(), RestoreError> {
    let mut seen = BTreeSet::new();
    for (name, value) in settings {
        let refuse = |reason: &str| RestoreError::BadSetting {
            name: name.clone(),
            reason: reason.to_owned(),
        };
        if !is_setting_name(name) {
            return Err(refuse(
                "not a setting name (letters, digits and _, at most one dot)",
            ));
        }
        let lower = name.to_ascii_lowercase();
        if RESTORE_OWN.contains(&lower.as_str()) || lower.starts_with(RECOVERY_TARGET_PREFIX) {
            return Err(refuse(
                "restore writes it itself; pass the recovery target as its own argument",
            ));
        }
        if !seen.insert(lower) {
            return Err(refuse("given twice"));
        }
        if quote_value(value).is_none() {
            return Err(refuse(
                "its value holds a line break or another control character",
            ));
        }
    }
    Ok(())
}

/// `name` or `prefix.name`, each part a letter or `_` then letters,
/// digits or `_` (PostgreSQL's `ID` and `QUALIFIED_ID`, ASCII only).
fn is_setting_name(name: &str) -> bool {
    let mut parts = name.split('.');
    let ok = |part: Option<&str>| {
        part.is_some_and(|p| {
            let mut chars = p.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    let first = ok(parts.next());
    match parts.next() {
        None => first,
        second => first && ok(second) && parts.next().is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: &str) -> Result<(), RestoreError> {
        check(&[(name.to_owned(), value.to_owned())])
    }

    fn refused(result: Result<(), RestoreError>) -> String {
        match result {
            Err(RestoreError::BadSetting { reason, .. }) => reason,
            other => panic!("expected BadSetting, got {other:?}"),
        }
    }

    #[test]
    fn plain_and_qualified_names_pass() {
        assert!(one("port", "6001").is_ok());
        assert!(one("citus.recover_2pc_interval", "-1").is_ok());
        assert!(one("_x9", "it's fine").is_ok());
        assert!(check(&[]).is_ok());
    }

    #[test]
    fn malformed_names_are_refused() {
        for name in [
            "", "9port", "a.b.c", ".a", "a.", "por t", "port=1", "a-b", "é", "a\nb",
        ] {
            assert!(
                refused(one(name, "1")).contains("not a setting name"),
                "{name:?}"
            );
        }
    }

    #[test]
    fn the_restores_own_settings_are_refused_in_any_case() {
        for name in [
            "restore_command",
            "RECOVERY_END_COMMAND",
            "allow_in_place_tablespaces",
            "recovery_target",
            "recovery_target_name",
            "Recovery_Target_Action",
        ] {
            assert!(refused(one(name, "x")).contains("itself"), "{name}");
        }
        assert!(one("recovery_min_apply_delay", "0").is_ok());
    }

    #[test]
    fn twice_and_unwritable_values_are_refused() {
        let twice = vec![
            ("port".to_owned(), "1".to_owned()),
            ("PORT".to_owned(), "2".to_owned()),
        ];
        assert_eq!(refused(check(&twice)), "given twice");
        assert!(refused(one("port", "1\n2")).contains("line break"));
        assert!(refused(one("port", "1\u{7}")).contains("control"));
    }
}
