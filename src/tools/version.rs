//! Tool versions (`1.8.5`, `1.9.0-rc1`) and the constraints a run spec may
//! give instead of one (`~> 1.8`, `>= 1.6, < 1.9`, `= 1.8.5`, `!= 1.7.0`),
//! as OpenTofu and Terraform write them.
//!
//! Call order: [`Version::parse`] or [`Constraint::parse`] (the run spec is
//! validated with it), then [`Constraint::newest`] over a source's version
//! list. A pre-release matches only a constraint that names it exactly.

use std::cmp::Ordering;
use std::fmt;

/// A release version: three numbers and an optional pre-release tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub nums: [u64; 3],
    /// `rc1` in `1.9.0-rc1`; empty for a release.
    pub pre: String,
}

impl Version {
    /// `1.8.5`, `v1.8.5`, `1.9.0-rc1`. Missing minor/patch numbers are
    /// refused (use a constraint for those).
    pub fn parse(text: &str) -> Result<Version, String> {
        let t = text.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        let (core, pre) = match t.split_once('-') {
            Some((c, p)) => (c, p),
            None => (t, ""),
        };
        let bad = || format!("{text:?} is not a version (expected MAJOR.MINOR.PATCH, e.g. 1.8.5)");
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() != 3 {
            return Err(bad());
        }
        let mut nums = [0u64; 3];
        for (n, p) in nums.iter_mut().zip(&parts) {
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            *n = p.parse().map_err(|_| bad())?;
        }
        if t.contains('-')
            && (pre.is_empty()
                || pre.len() > 32
                || !pre
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            return Err(bad());
        }
        Ok(Version {
            nums,
            pre: pre.to_string(),
        })
    }

    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.nums;
        write!(f, "{a}.{b}.{c}")?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        Ok(())
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nums
            .cmp(&other.nums)
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    /// `~>`: the last given number may grow.
    Pessimistic,
}

/// One term: an operator and a version whose missing numbers are 0
/// (`given` says how many were written, for `~>`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    op: Op,
    v: Version,
    given: usize,
}

/// A version constraint: every comma-separated term must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    terms: Vec<Term>,
    text: String,
}

impl Constraint {
    /// A bare version (`1.8.5`) is `= 1.8.5`.
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let bad = |why: &str| {
            format!(
                "version {text:?}: {why} (expected a version like 1.8.5 or a constraint like \"~> 1.8\" or \">= 1.6, < 1.9\")"
            )
        };
        if text.trim().is_empty() {
            return Err(bad("empty"));
        }
        if text.len() > 256 {
            return Err(bad("too long"));
        }
        let mut terms = Vec::new();
        for raw in text.split(',') {
            let t = raw.trim();
            let (op, rest) = [
                ("~>", Op::Pessimistic),
                (">=", Op::Ge),
                ("<=", Op::Le),
                ("!=", Op::Ne),
                (">", Op::Gt),
                ("<", Op::Lt),
                ("=", Op::Eq),
            ]
            .iter()
            .find_map(|(s, op)| t.strip_prefix(s).map(|r| (*op, r.trim())))
            .unwrap_or((Op::Eq, t));
            if rest.is_empty() {
                return Err(bad("a term has no version"));
            }
            let (core, pre) = match rest.split_once('-') {
                Some((c, p)) => (c, Some(p)),
                None => (rest, None),
            };
            let given = core.split('.').count();
            if given > 3 {
                return Err(bad("a version has more than three numbers"));
            }
            let mut full = core.to_string();
            for _ in given..3 {
                full.push_str(".0");
            }
            if let Some(p) = pre {
                full.push('-');
                full.push_str(p);
            }
            let v = Version::parse(&full).map_err(|e| bad(&e))?;
            terms.push(Term { op, v, given });
        }
        Ok(Constraint {
            terms,
            text: text.trim().to_string(),
        })
    }

    /// The one version this constraint names exactly (`1.8.5`, `= 1.8.5`),
    /// when it is that simple: no version list is needed then.
    pub fn exact(&self) -> Option<&Version> {
        match &self.terms[..] {
            [
                Term {
                    op: Op::Eq,
                    v,
                    given: 3,
                },
            ] => Some(v),
            _ => None,
        }
    }

    pub fn matches(&self, v: &Version) -> bool {
        if v.is_prerelease() && !self.terms.iter().any(|t| t.op == Op::Eq && &t.v == v) {
            return false;
        }
        self.terms.iter().all(|t| match t.op {
            Op::Eq => v == &t.v,
            Op::Ne => v != &t.v,
            Op::Gt => v > &t.v,
            Op::Ge => v >= &t.v,
            Op::Lt => v < &t.v,
            Op::Le => v <= &t.v,
            Op::Pessimistic => {
                if v < &t.v {
                    return false;
                }
                // The numbers before the last given one stay the same.
                let fixed = t.given.saturating_sub(1).max(1);
                v.nums[..fixed] == t.v.nums[..fixed]
            }
        })
    }

    /// The newest version in `list` that matches.
    pub fn newest<'a>(&self, list: impl IntoIterator<Item = &'a Version>) -> Option<&'a Version> {
        list.into_iter().filter(|v| self.matches(v)).max()
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(v("v1.8.5").to_string(), "1.8.5");
        assert!(v("1.10.0") > v("1.9.9"));
        assert!(v("1.9.0") > v("1.9.0-rc1"));
        for bad in [
            "1.8",
            "1.8.x",
            "",
            "1..2",
            "1.2.3-",
            "1.2.3-a b",
            "01234567890.1.1",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn constraints_pick_the_newest_match() {
        let list: Vec<Version> = [
            "1.6.2",
            "1.7.8",
            "1.8.0",
            "1.8.5",
            "1.9.0-rc1",
            "1.9.1",
            "2.0.0",
        ]
        .iter()
        .map(|s| v(s))
        .collect();
        let newest = |c: &str| {
            Constraint::parse(c)
                .unwrap()
                .newest(&list)
                .map(ToString::to_string)
        };
        assert_eq!(newest("~> 1.8").as_deref(), Some("1.9.1"));
        assert_eq!(newest("~> 1.8.0").as_deref(), Some("1.8.5"));
        assert_eq!(newest(">= 1.6, < 1.9").as_deref(), Some("1.8.5"));
        assert_eq!(newest("1.7.8").as_deref(), Some("1.7.8"));
        assert_eq!(newest("= 1.9.0-rc1").as_deref(), Some("1.9.0-rc1"));
        assert_eq!(newest(">= 1.0, != 2.0.0").as_deref(), Some("1.9.1"));
        assert_eq!(newest("~> 1").as_deref(), Some("1.9.1"));
        assert_eq!(newest("> 2.0.0"), None);
        assert_eq!(newest("~> 3.1"), None);
        assert!(Constraint::parse("1.8.5").unwrap().exact().is_some());
        assert!(Constraint::parse("~> 1.8").unwrap().exact().is_none());
        for bad in ["", ">=", "~> x", "1.2.3.4", ">= 1.6,"] {
            let e = Constraint::parse(bad).unwrap_err();
            assert!(e.contains("expected"), "{e}");
        }
    }
}
