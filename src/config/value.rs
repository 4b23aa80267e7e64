//! Typed phil values: how the words of an assignment become a Rust value, and
//! how a value is written back as phil text.
//!
//! Conventions (libtbx's, where they are sensible):
//! * `None`/`Auto` (unquoted, any case) mean "no value"/"automatic"; they are
//!   accepted only by `Option<T>`/[`AutoOr<T>`] fields. A quoted `"None"` is a string.
//! * bool: True/False, yes/no, on/off, 1/0 (any case).
//! * Number lists: outer `[…]`/`(…)` are dropped, then items are split on
//!   whitespace, `,` and `;`: `30 31 32`, `[1,40]`, `(10,10,10)` all work.
//! * Integers may be written as integral floats (`lbfgs_maxiter = 1e5`).
//! * Floats must be finite. No arithmetic expressions (libtbx evaluates Python).
//! * str: the words joined by one space. path: the same, then a relative path
//!   is joined to [`Ctx::base_dir`] (the phil file's folder, or the working
//!   directory for `--cmdlinePhil`).
//! * choice: one word (optionally `*`-marked) or the full phil list with
//!   exactly one `*` (`low normal *high`).

use super::phil::Word;
use std::path::{Path, PathBuf};

/// What a conversion needs besides the words.
pub struct Ctx<'a> {
    /// Folder that relative paths are joined to.
    pub base_dir: &'a Path,
}

/// A Rust type that can hold a phil parameter.
pub trait PhilValue: Sized {
    /// The phil-style type shown by `config explain` (`floats(size=3)`, `path or None`…).
    fn type_name() -> String;
    /// Convert the words of one assignment. The error says what is wrong with
    /// the value; the caller adds the parameter name and location.
    fn from_words(words: &[Word], ctx: &Ctx) -> Result<Self, String>;
    /// The value as phil text that [`PhilValue::from_words`] reads back.
    fn to_text(&self) -> String;
}

fn joined(words: &[Word]) -> String {
    words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ")
}

fn is_keyword(words: &[Word], kw: &str) -> bool {
    words.len() == 1 && !words[0].quoted && words[0].text.eq_ignore_ascii_case(kw)
}

fn single(words: &[Word]) -> Result<String, String> {
    match words {
        [] => Err("no value given".into()),
        _ if is_keyword(words, "none") => Err("None is not allowed here (a value is required)".into()),
        _ if is_keyword(words, "auto") => Err("Auto is not allowed here".into()),
        [w] => Ok(w.text.clone()),
        _ => Err(format!("expected one value, found {} words", words.len())),
    }
}

/// Format a float so that it reads back exactly and stays short.
pub fn fmt_f64(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e6).contains(&a) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// Quote a string if it would not read back as the same single string.
pub fn quote_if_needed(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.chars().any(|c| c.is_whitespace() || "#{};\"'\\".contains(c))
        && !s.eq_ignore_ascii_case("none")
        && !s.eq_ignore_ascii_case("auto")
        && !s.starts_with('*');
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn parse_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_) => Err(format!("`{s}` is not a finite number")),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

fn parse_i64(s: &str) -> Result<i64, String> {
    if let Ok(i) = s.parse::<i64>() {
        return Ok(i);
    }
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e15 => Ok(x as i64),
        Ok(_) => Err(format!("`{s}` is not an integer")),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

/// Split a number list as libtbx does: strip outer brackets, split on
/// whitespace, commas and semicolons.
fn number_items(words: &[Word]) -> Result<Vec<String>, String> {
    if words.is_empty() {
        return Err("no value given".into());
    }
    if is_keyword(words, "none") {
        return Err("None is not allowed here (a value is required)".into());
    }
    if is_keyword(words, "auto") {
        return Err("Auto is not allowed here".into());
    }
    let mut s = joined(words);
    loop {
        let t = s.trim();
        let stripped = t
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .or_else(|| t.strip_prefix('(').and_then(|r| r.strip_suffix(')')));
        match stripped {
            Some(inner) => s = inner.to_string(),
            None => break,
        }
    }
    Ok(s.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect())
}

impl PhilValue for bool {
    fn type_name() -> String {
        "bool".into()
    }
    fn from_words(words: &[Word], _: &Ctx) -> Result<Self, String> {
        let s = single(words)?;
        match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(format!("`{s}` is not True or False")),
        }
    }
    fn to_text(&self) -> String {
        if *self { "True" } else { "False" }.into()
    }
}

impl PhilValue for f64 {
    fn type_name() -> String {
        "float".into()
    }
    fn from_words(words: &[Word], _: &Ctx) -> Result<Self, String> {
        match number_items(words)?.as_slice() {
            [one] => parse_f64(one),
            items => Err(format!("expected one number, found {}", items.len())),
        }
    }
    fn to_text(&self) -> String {
        fmt_f64(*self)
    }
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl PhilValue for $t {
            fn type_name() -> String {
                if <$t>::MIN == 0 { "int (≥ 0)".into() } else { "int".into() }
            }
            fn from_words(words: &[Word], _: &Ctx) -> Result<Self, String> {
                match number_items(words)?.as_slice() {
                    [one] => {
                        let i = parse_i64(one)?;
                        <$t>::try_from(i).map_err(|_| format!("`{one}` is out of range for {}", Self::type_name()))
                    }
                    items => Err(format!("expected one integer, found {}", items.len())),
                }
            }
            fn to_text(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
int_value!(i64, i32, u32, usize);

impl PhilValue for String {
    fn type_name() -> String {
        "str".into()
    }
    fn from_words(words: &[Word], _: &Ctx) -> Result<Self, String> {
        if words.is_empty() {
            return Err("no value given".into());
        }
        if is_keyword(words, "none") {
            return Err("None is not allowed here (a value is required)".into());
        }
        Ok(joined(words))
    }
    fn to_text(&self) -> String {
        quote_if_needed(self)
    }
}

impl PhilValue for PathBuf {
    fn type_name() -> String {
        "path".into()
    }
    fn from_words(words: &[Word], ctx: &Ctx) -> Result<Self, String> {
        let s = String::from_words(words, ctx)?;
        if s.is_empty() {
            return Err("empty path".into());
        }
        let p = PathBuf::from(s);
        Ok(if p.is_absolute() { p } else { ctx.base_dir.join(p) })
    }
    fn to_text(&self) -> String {
        quote_if_needed(&self.to_string_lossy())
    }
}

impl<const N: usize> PhilValue for [f64; N] {
    fn type_name() -> String {
        format!("floats(size={N})")
    }
    fn from_words(words: &[Word], ctx: &Ctx) -> Result<Self, String> {
        let v = Vec::<f64>::from_words(words, ctx)?;
        v.try_into().map_err(|v: Vec<f64>| format!("expected {N} numbers, found {}", v.len()))
    }
    fn to_text(&self) -> String {
        self.iter().map(|x| fmt_f64(*x)).collect::<Vec<_>>().join(" ")
    }
}

impl<const N: usize> PhilValue for [i64; N] {
    fn type_name() -> String {
        format!("ints(size={N})")
    }
    fn from_words(words: &[Word], ctx: &Ctx) -> Result<Self, String> {
        let v = Vec::<i64>::from_words(words, ctx)?;
        v.try_into().map_err(|v: Vec<i64>| format!("expected {N} integers, found {}", v.len()))
    }
    fn to_text(&self) -> String {
        self.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")
    }
}

impl PhilValue for Vec<f64> {
    fn type_name() -> String {
        "floats".into()
    }
    fn from_words(words: &[Word], _: &Ctx) -> Result<Self, String> {
        number_items(words)?.iter().map(|s| parse_f64(s)).collect()
    }
    fn to_text(&self) -> String {
        self.iter().map(|x| fmt_f64(*x)).collect::<Vec<_>>().join(" ")
    }
}

impl PhilValue for Vec<i64> {
    fn type_name() -> String {
        "ints".into()
    }
    fn from_words(words: &[Word], _: &Ctx) -> Result<Self, String> {
        number_items(words)?.iter().map(|s| parse_i64(s)).collect()
    }
    fn to_text(&self) -> String {
        self.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")
    }
}

impl PhilValue for Vec<String> {
    fn type_name() -> String {
        "strings".into()
    }
    fn from_words(words: &[Word], _: &Ctx) -> Result<Self, String> {
        if words.is_empty() {
            return Err("no value given".into());
        }
        if is_keyword(words, "none") {
            return Err("None is not allowed here (a value is required)".into());
        }
        Ok(words.iter().map(|w| w.text.clone()).collect())
    }
    fn to_text(&self) -> String {
        self.iter().map(|s| quote_if_needed(s)).collect::<Vec<_>>().join(" ")
    }
}

impl<T: PhilValue> PhilValue for Option<T> {
    fn type_name() -> String {
        format!("{} or None", T::type_name())
    }
    fn from_words(words: &[Word], ctx: &Ctx) -> Result<Self, String> {
        if is_keyword(words, "none") {
            Ok(None)
        } else {
            T::from_words(words, ctx).map(Some)
        }
    }
    fn to_text(&self) -> String {
        match self {
            None => "None".into(),
            Some(v) => v.to_text(),
        }
    }
}

/// A value that may be left for the program to choose (`Auto`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AutoOr<T> {
    Auto,
    Value(T),
}

impl<T: PhilValue> PhilValue for AutoOr<T> {
    fn type_name() -> String {
        format!("{} or Auto", T::type_name())
    }
    fn from_words(words: &[Word], ctx: &Ctx) -> Result<Self, String> {
        if is_keyword(words, "auto") {
            Ok(AutoOr::Auto)
        } else {
            T::from_words(words, ctx).map(AutoOr::Value)
        }
    }
    fn to_text(&self) -> String {
        match self {
            AutoOr::Auto => "Auto".into(),
            AutoOr::Value(v) => v.to_text(),
        }
    }
}

/// Resolution ranges in Å, written `"dmin-dmax,dmin-dmax"` (diffBragg's
/// `refiner.res_ranges`). Each pair is `[d_min, d_max]` with `0 < d_min < d_max`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResRanges(pub Vec<[f64; 2]>);

impl ResRanges {
    /// Whether a reflection at resolution `d` (Å) lies in any range
    /// (inclusive low bound, exclusive high bound as diffBragg's shells).
    pub fn contains(&self, d: f64) -> bool {
        self.0.iter().any(|[lo, hi]| d >= *lo && d < *hi)
    }
}

impl PhilValue for ResRanges {
    fn type_name() -> String {
        "resolution ranges \"dmin-dmax,dmin-dmax,…\"".into()
    }
    fn from_words(words: &[Word], _: &Ctx) -> Result<Self, String> {
        if words.is_empty() {
            return Err("no value given".into());
        }
        let s = joined(words);
        let mut out = Vec::new();
        for item in s.split(|c: char| c == ',' || c.is_whitespace()).filter(|x| !x.is_empty()) {
            // The separator is a '-' that is neither leading nor an exponent sign.
            let b = item.as_bytes();
            let sep = (1..b.len()).find(|&i| b[i] == b'-' && !matches!(b[i - 1], b'e' | b'E'));
            let Some(i) = sep else {
                return Err(format!("`{item}` is not of the form dmin-dmax"));
            };
            let (lo, hi) = (parse_f64(&item[..i])?, parse_f64(&item[i + 1..])?);
            if !(lo > 0.0 && lo < hi) {
                return Err(format!("`{item}`: need 0 < dmin < dmax (high resolution first)"));
            }
            out.push([lo, hi]);
        }
        if out.is_empty() {
            return Err("no ranges given".into());
        }
        Ok(ResRanges(out))
    }
    fn to_text(&self) -> String {
        self.0.iter().map(|[a, b]| format!("{}-{}", fmt_f64(*a), fmt_f64(*b))).collect::<Vec<_>>().join(",")
    }
}

/// Pick one of `options` from choice words; returns its index. `note` is
/// appended to the error (e.g. why other values are not offered).
pub fn choose(words: &[Word], options: &[&str], note: &str) -> Result<usize, String> {
    let find = |w: &str| {
        options.iter().position(|o| *o == w).or_else(|| {
            let ci: Vec<usize> = (0..options.len()).filter(|&i| options[i].eq_ignore_ascii_case(w)).collect();
            if ci.len() == 1 {
                Some(ci[0])
            } else {
                None
            }
        })
    };
    let bad = |w: &str| {
        let mut m = format!("`{w}` is not one of: {}", options.join(", "));
        if !note.is_empty() {
            m.push_str(&format!(" ({note})"));
        }
        m
    };
    match words {
        [] => Err("no value given".into()),
        [w] => {
            let t = w.text.strip_prefix('*').unwrap_or(&w.text);
            find(t).ok_or_else(|| bad(t))
        }
        _ => {
            let mut chosen = None;
            for w in words {
                let (starred, t) = match w.text.strip_prefix('*') {
                    Some(t) if !w.quoted => (true, t),
                    _ => (false, w.text.as_str()),
                };
                let i = find(t).ok_or_else(|| bad(t))?;
                if starred {
                    if chosen.is_some() {
                        return Err("more than one choice is marked with `*`".into());
                    }
                    chosen = Some(i);
                }
            }
            chosen.ok_or_else(|| "several words but none is marked with `*`".into())
        }
    }
}

/// Declares a phil `choice` as a Rust enum: `choice! { pub enum LogLevel {
/// Low = "low", Normal = "normal" } }`, optionally followed by
/// `note "…"` which is added to the error for a value not in the list.
#[macro_export]
#[doc(hidden)]
macro_rules! phil_choice {
    ($(#[$m:meta])* pub enum $name:ident { $($var:ident = $text:literal),+ $(,)? } $(note $note:literal)?) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($var),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            const TEXTS: &'static [&'static str] = &[$($text),+];
            /// The phil spelling of this choice.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $text),+ }
            }
        }
        impl $crate::config::value::PhilValue for $name {
            fn type_name() -> String {
                format!("choice({})", Self::TEXTS.join(" | "))
            }
            fn from_words(
                words: &[$crate::config::phil::Word],
                _: &$crate::config::value::Ctx,
            ) -> Result<Self, String> {
                let note = [""$(, $note)?].last().copied().unwrap_or("");
                $crate::config::value::choose(words, Self::TEXTS, note).map(|i| Self::ALL[i])
            }
            fn to_text(&self) -> String {
                if Self::ALL.len() == 1 {
                    return $crate::config::value::quote_if_needed(self.as_str());
                }
                Self::ALL
                    .iter()
                    .map(|c| if c == self { format!("*{}", c.as_str()) } else { c.as_str().to_string() })
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<Word> {
        s.split_whitespace().map(Word::plain).collect()
    }
    fn ctx() -> Ctx<'static> {
        Ctx { base_dir: Path::new("/base") }
    }
    fn rt<T: PhilValue + PartialEq + std::fmt::Debug>(v: T) {
        let text = v.to_text();
        let words = crate::config::phil::parse_file_text(&format!("x = {text}\n"), Path::new("/t")).unwrap();
        assert_eq!(T::from_words(&words[0].words, &ctx()).unwrap(), v, "text {text}");
    }

    crate::phil_choice! { pub enum Lvl { Low = "low", Normal = "normal", High = "high" } }
    crate::phil_choice! { pub enum Only { Lb = "L-BFGS-B" } note "only this one" }

    #[test]
    fn numbers_and_lists() {
        assert_eq!(<[f64; 3]>::from_words(&w("30 31 32"), &ctx()).unwrap(), [30.0, 31.0, 32.0]);
        assert_eq!(<[f64; 2]>::from_words(&w("[1,40]"), &ctx()).unwrap(), [1.0, 40.0]);
        assert_eq!(<[f64; 3]>::from_words(&w("(10,10,10)"), &ctx()).unwrap(), [10.0; 3]);
        assert_eq!(<[f64; 2]>::from_words(&w("[ 1 , 40 ]"), &ctx()).unwrap(), [1.0, 40.0]);
        assert_eq!(f64::from_words(&w(".5"), &ctx()).unwrap(), 0.5);
        assert_eq!(i64::from_words(&w("1e5"), &ctx()).unwrap(), 100_000);
        assert!(i64::from_words(&w("1.5"), &ctx()).unwrap_err().contains("not an integer"));
        assert!(usize::from_words(&w("-1"), &ctx()).is_err());
        assert!(f64::from_words(&w("nan"), &ctx()).is_err());
        assert!(f64::from_words(&w("abc"), &ctx()).unwrap_err().contains("`abc` is not a number"));
        assert!(<[f64; 3]>::from_words(&w("1 2"), &ctx())
            .unwrap_err()
            .contains("expected 3 numbers, found 2"));
        assert!(f64::from_words(&w("None"), &ctx()).is_err());
        assert_eq!(Option::<f64>::from_words(&w("None"), &ctx()).unwrap(), None);
        assert_eq!(AutoOr::<i64>::from_words(&w("Auto"), &ctx()).unwrap(), AutoOr::Auto);
    }

    #[test]
    fn bools_strings_paths() {
        assert!(bool::from_words(&w("True"), &ctx()).unwrap());
        assert!(!bool::from_words(&w("off"), &ctx()).unwrap());
        assert!(bool::from_words(&w("Tru"), &ctx()).is_err());
        assert_eq!(PathBuf::from_words(&w("a/b.mask"), &ctx()).unwrap(), PathBuf::from("/base/a/b.mask"));
        assert_eq!(PathBuf::from_words(&w("/abs/x"), &ctx()).unwrap(), PathBuf::from("/abs/x"));
        let q = vec![Word { text: "None".into(), quoted: true }];
        assert_eq!(Option::<String>::from_words(&q, &ctx()).unwrap(), Some("None".into()));
    }

    #[test]
    fn choices() {
        assert_eq!(Lvl::from_words(&w("low normal *high"), &ctx()).unwrap(), Lvl::High);
        assert_eq!(Lvl::from_words(&w("normal"), &ctx()).unwrap(), Lvl::Normal);
        assert_eq!(Lvl::from_words(&w("*low"), &ctx()).unwrap(), Lvl::Low);
        assert!(Lvl::from_words(&w("low *normal *high"), &ctx()).is_err());
        assert!(Lvl::from_words(&w("low normal"), &ctx()).is_err());
        assert!(Lvl::from_words(&w("loud"), &ctx()).unwrap_err().contains("not one of: low, normal, high"));
        let q = vec![Word { text: "L-BFGS-B".into(), quoted: true }];
        assert_eq!(Only::from_words(&q, &ctx()).unwrap(), Only::Lb);
        let e = Only::from_words(&w("Nelder-Mead"), &ctx()).unwrap_err();
        assert!(e.contains("only this one"), "{e}");
        assert_eq!(Lvl::High.to_text(), "low normal *high");
    }

    #[test]
    fn res_ranges() {
        let r = ResRanges::from_words(&w("2.5-10,1.8-2.5"), &ctx()).unwrap();
        assert_eq!(r.0, vec![[2.5, 10.0], [1.8, 2.5]]);
        assert!(r.contains(3.0) && !r.contains(1.0) && !r.contains(10.0));
        assert!(ResRanges::from_words(&w("10-2"), &ctx()).is_err());
        assert!(ResRanges::from_words(&w("abc"), &ctx()).is_err());
        assert_eq!(ResRanges::from_words(&w("1e-1-2"), &ctx()).unwrap().0, vec![[0.1, 2.0]]);
    }

    #[test]
    fn round_trips() {
        rt(1e6f64);
        rt(0.0025f64);
        rt(1e-10f64);
        rt(-3.25f64);
        rt([30.0f64, 31.0, 32.0]);
        rt(vec![1.0f64, 2.5]);
        rt(Some("F-model,PHIF-model".to_string()));
        rt("has space # and quote\"".to_string());
        rt("semi;colon\\".to_string());
        rt(Some(PathBuf::from("/a b/c.mtz")));
        rt(Option::<f64>::None);
        rt(AutoOr::<i64>::Auto);
        rt(Lvl::High);
        rt(Only::Lb);
        rt(ResRanges(vec![[1.8, 2.5], [3.0, 40.0]]));
        rt(vec!["fft1d".to_string(), "real_space_grid_search".to_string()]);
        rt("None".to_string());
    }
}
