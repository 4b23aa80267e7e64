//! Matching a typed parameter name against the schema's full names.
//!
//! Rule for `--cmdlinePhil` keys (libtbx's, made stricter and program-aware):
//! 1. a key equal to a full name is that parameter;
//! 2. otherwise the key must be a dotted suffix made of whole components
//!    (`threshold` matches `predictions.threshold`, not `background_threshold`);
//! 3. several matches are narrowed to the parameters the program reads; one
//!    left wins, otherwise the key is ambiguous and every candidate is listed.
//!
//! (libtbx also scores partial-component suffixes and breaks ties by expert
//! level, which leaves `threshold=1e2` ambiguous for diffBragg.integrate.)

/// The outcome of resolving one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The full name the key stands for; `others` lists candidates that were
    /// set aside because the program does not read them.
    Found {
        name: String,
        others: Vec<String>,
    },
    Ambiguous(Vec<String>),
    /// No match; the closest names, best first.
    Unknown(Vec<String>),
}

/// Whether `name` ends with the dotted components of `key`.
pub fn is_suffix(key: &str, name: &str) -> bool {
    name == key || name.strip_suffix(key).is_some_and(|head| head.ends_with('.'))
}

pub fn resolve<'a>(
    key: &str,
    names: impl Iterator<Item = &'a str> + Clone,
    used: &dyn Fn(&str) -> bool,
) -> Resolution {
    if names.clone().any(|n| n == key) {
        return Resolution::Found { name: key.to_string(), others: vec![] };
    }
    let cands: Vec<&str> = names.clone().filter(|n| is_suffix(key, n)).collect();
    match cands.len() {
        0 => Resolution::Unknown(suggest(key, names)),
        1 => Resolution::Found { name: cands[0].to_string(), others: vec![] },
        _ => {
            let used_c: Vec<&str> = cands.iter().copied().filter(|n| used(n)).collect();
            if used_c.len() == 1 {
                let others = cands.iter().filter(|n| **n != used_c[0]).map(|s| s.to_string()).collect();
                Resolution::Found { name: used_c[0].to_string(), others }
            } else {
                Resolution::Ambiguous(cands.iter().map(|s| s.to_string()).collect())
            }
        }
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The last `k` dotted components of `name`.
fn tail(name: &str, k: usize) -> &str {
    let mut idx = name.len();
    for _ in 0..k {
        match name[..idx].rfind('.') {
            Some(i) => idx = i,
            None => return name,
        }
    }
    &name[idx + 1..]
}

/// Names close to `key` (case-insensitive edit distance between the key and
/// the same number of trailing components of each name), best first, at most 5.
pub fn suggest<'a>(key: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let k = key.split('.').count();
    let key_l = key.to_lowercase();
    let limit = (key.len() / 4).clamp(1, 3);
    let mut scored: Vec<(usize, &str)> = names
        .filter_map(|n| {
            let t = tail(n, k);
            // The distance is at least the length difference: skip the far ones cheaply.
            if t.chars().count().abs_diff(key.chars().count()) > limit {
                return None;
            }
            let d = levenshtein(&key_l, &t.to_lowercase());
            (d <= limit).then_some((d, n))
        })
        .collect();
    scored.sort();
    let best = scored.first().map(|s| s.0).unwrap_or(0);
    scored.into_iter().filter(|(d, _)| *d == best).take(5).map(|(_, n)| n.to_string()).collect()
}

/// " (did you mean `a` or `b`?)", or "" when there is nothing to suggest.
pub fn did_you_mean(sugg: &[String]) -> String {
    match sugg {
        [] => String::new(),
        [one] => format!(" (did you mean `{one}`?)"),
        more => format!(
            " (did you mean {}?)",
            more.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(" or ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "predictions.threshold",
        "filter_during_refinement.threshold",
        "filter_after_refinement.threshold",
        "roi.background_threshold",
        "refiner.load_data_from_refl",
        "load_data_from_refls",
        "fix.Nabc",
        "init.Nabc",
        "skip",
        "downsamp_spec.skip",
    ];

    fn r(key: &str, used: &dyn Fn(&str) -> bool) -> Resolution {
        resolve(key, NAMES.iter().copied(), used)
    }

    #[test]
    fn suffix_rules() {
        let all = |_: &str| true;
        assert_eq!(r("fix.Nabc", &all), Resolution::Found { name: "fix.Nabc".into(), others: vec![] });
        assert_eq!(
            r("load_data_from_refl", &all),
            Resolution::Found { name: "refiner.load_data_from_refl".into(), others: vec![] }
        );
        // A full name wins over suffix matches.
        assert_eq!(r("skip", &all), Resolution::Found { name: "skip".into(), others: vec![] });
        match r("threshold", &all) {
            Resolution::Ambiguous(c) => assert_eq!(c.len(), 3),
            x => panic!("{x:?}"),
        }
        let integrate = |n: &str| !n.starts_with("filter_");
        match r("threshold", &integrate) {
            Resolution::Found { name, others } => {
                assert_eq!(name, "predictions.threshold");
                assert_eq!(others.len(), 2);
            }
            x => panic!("{x:?}"),
        }
        // Partial components do not match.
        assert!(matches!(r("hreshold", &all), Resolution::Unknown(_)));
        assert!(matches!(r("Nabc", &all), Resolution::Ambiguous(_)));
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("fix.nabc", NAMES.iter().copied()), vec!["fix.Nabc"]);
        assert_eq!(suggest("treshold", NAMES.iter().copied()).len(), 3);
        assert!(suggest("completely_different", NAMES.iter().copied()).is_empty());
        assert_eq!(
            suggest("refiner.load_data_from_ref", NAMES.iter().copied()),
            vec!["refiner.load_data_from_refl"]
        );
        assert_eq!(did_you_mean(&["a".into()]), " (did you mean `a`?)");
    }
}
