//! Helpers that keep tests honest about their inputs: a spec patched only where the text
//! to replace is there, and a seeded random source every randomized test replays the same
//! way.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// Text (a spec, a query) with one part replaced, failing the test when the part is not
/// there: a replace that matches nothing would leave the spec as it was and let the test
/// pass without testing what it says.
pub trait Patched {
    /// `self` with every `from` replaced by `to`; panics naming `from` when it is absent.
    fn patched(&self, from: &str, to: &str) -> String;
}

impl<T: AsRef<str> + ?Sized> Patched for T {
    fn patched(&self, from: &str, to: &str) -> String {
        let text = self.as_ref();
        assert!(
            text.contains(from),
            "the text to patch does not contain {from:?}:\n{text}"
        );
        text.replace(from, to)
    }
}

/// A random source seeded from the environment variable `env` (a number), else from
/// `default`; the seed is printed with how to replay it. A value that is not a number
/// fails rather than falling back unseen.
pub fn seeded(env: &str, default: u64) -> (u64, StdRng) {
    let seed = match std::env::var(env) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{env}={value:?} is not a number")),
        Err(_) => default,
    };
    eprintln!("seed {seed} (replay with {env}={seed})");
    (seed, StdRng::seed_from_u64(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_that_matches_nothing_fails() {
        assert_eq!("a: 1".patched("1", "2"), "a: 2");
        let missing = std::panic::catch_unwind(|| "a: 1".patched("b", "c"));
        assert!(missing.is_err());
    }
}
