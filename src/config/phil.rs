//! The phil text format (libtbx.phil, as written by cctbx/DIALS users), parsed
//! into a flat list of assignments.
//!
//! Supported syntax:
//! * nested scopes `a { b { c = 1 } }`, with the brace on the same or a later line;
//! * dotted names both for parameters and scopes: `a.b.c = 1`, `a.b { c = 1 }`;
//! * a value is every word up to the end of the line, a `;` or a `}`; a
//!   trailing `\` continues it on the next line; words are separated by
//!   whitespace; `"…"`, `'…'` and `"""…"""` quote a word (may span lines; a
//!   backslash escapes only a backslash, the quote or a newline, as in libtbx);
//! * `#` starts a comment anywhere outside quotes; `#phil __OFF__` …
//!   `#phil __ON__` skips a block and `#phil __END__` ends the input;
//! * a name written `!name` disables that definition or scope (libtbx);
//! * list brackets, commas and `*choice` markers are kept inside the words:
//!   turning words into typed values is [`super::value`]'s job.
//!
//! This module knows nothing about which names exist. Each assignment carries
//! the file and the 1-based line of its name, so later errors can point at it.
//! The parser is iterative (no recursion), so deeply nested input cannot
//! overflow the stack.

use std::fmt;
use std::path::{Path, PathBuf};

/// One word of a value. `quoted` words were written in quotes; a quoted
/// `"None"` is the string None, not the absence of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub quoted: bool,
}

impl Word {
    pub fn plain(text: &str) -> Word {
        Word { text: text.to_string(), quoted: false }
    }
}

/// Where an assignment was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A phil file (absolute path) and the 1-based line of the parameter name.
    File { path: PathBuf, line: usize },
    /// The `index`-th (0-based) `--cmdlinePhil` argument, as typed.
    CmdLine { index: usize, arg: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{}", path.display(), line),
            Origin::CmdLine { arg, .. } => write!(f, "--cmdlinePhil `{arg}`"),
        }
    }
}

/// `name = words` with `name` the full dotted path (enclosing scopes included).
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub name: String,
    pub words: Vec<Word>,
    pub origin: Origin,
}

/// A syntax error: the line it was found on and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub msg: String,
}

/// Parse phil text. `source` says where it came from; for files, each
/// assignment's origin is `File { path: source, line }`.
pub fn parse_file_text(text: &str, source: &Path) -> Result<Vec<Assignment>, SyntaxError> {
    parse(text, &|line| Origin::File { path: source.to_path_buf(), line })
}

/// Parse phil text, building each assignment's origin from its line number.
pub fn parse(text: &str, origin: &dyn Fn(usize) -> Origin) -> Result<Vec<Assignment>, SyntaxError> {
    Parser { chars: text.trim_start_matches('\u{feff}').chars().collect(), pos: 0, line: 1 }.run(origin)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

fn err<T>(line: usize, msg: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError { line, msg: msg.into() })
}

/// Characters that end an unquoted word.
fn is_delim(c: char) -> bool {
    c.is_whitespace() || c == '{' || c == '}' || c == '#' || c == ';'
}

/// A valid dotted name: identifiers (`[A-Za-z_][A-Za-z0-9_]*`) joined by dots.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|c| {
            let mut it = c.chars();
            matches!(it.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
                && it.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        })
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.pos += 1;
        }
    }

    fn at(&self, s: &str) -> bool {
        s.chars().enumerate().all(|(i, c)| self.chars.get(self.pos + i) == Some(&c))
    }

    /// Skip spaces, newlines, comments and stray `;` between statements,
    /// honouring the `#phil __OFF__/__ON__/__END__` meta comments.
    fn skip_blank(&mut self) {
        while let Some(c) = self.peek() {
            if self.at("#phil __END__") {
                self.pos = self.chars.len();
            } else if self.at("#phil __OFF__") {
                loop {
                    self.skip_comment();
                    if self.bump().is_none() || self.at("#phil __ON__") || self.at("#phil __END__") {
                        break;
                    }
                }
            } else if c == '#' {
                self.skip_comment();
            } else if c.is_whitespace() || c == ';' {
                self.bump();
            } else {
                break;
            }
        }
    }

    /// A quoted word starting at the opening quote (single or triple).
    fn quoted(&mut self) -> Result<String, SyntaxError> {
        let open_line = self.line;
        let q = self.bump().unwrap_or('"');
        let triple: String = [q, q].iter().collect();
        let triple = if self.at(&triple) {
            self.pos += 2;
            true
        } else {
            false
        };
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return err(open_line, format!("unterminated {q}-quoted string")),
                Some(c) if c == q && !triple => return Ok(s),
                Some(c) if c == q && self.peek() == Some(q) && self.chars.get(self.pos + 1) == Some(&q) => {
                    self.pos += 2;
                    return Ok(s);
                }
                // libtbx: `\\` is a backslash, `\"` the quote, backslash-newline
                // joins lines; any other backslash is kept literally.
                Some('\\') => match self.peek() {
                    Some('\\') => {
                        self.pos += 1;
                        s.push('\\');
                    }
                    Some(c) if c == q => {
                        self.pos += 1;
                        s.push(q);
                    }
                    Some('\n') => {
                        self.bump();
                    }
                    _ => s.push('\\'),
                },
                Some(c) => s.push(c),
            }
        }
    }

    /// An unquoted run of characters up to a delimiter (`=` included when
    /// reading a name).
    fn bare(&mut self, stop_at_eq: bool) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek() {
            if is_delim(c) || (stop_at_eq && c == '=') {
                break;
            }
            s.push(c);
            self.pos += 1;
        }
        s
    }

    /// The words of a value, up to the end of the line, a `;`, a `}` or a
    /// comment; a trailing backslash continues the value on the next line.
    fn value_words(&mut self) -> Result<Vec<Word>, SyntaxError> {
        let mut words: Vec<Word> = Vec::new();
        loop {
            while matches!(self.peek(), Some(c) if c.is_whitespace() && c != '\n') {
                self.pos += 1;
            }
            let continued = matches!(words.last(), Some(w) if !w.quoted && w.text.ends_with('\\'));
            match self.peek() {
                Some('\n') if continued => {
                    self.bump();
                    let w = words.last_mut().expect("checked above");
                    w.text.pop();
                    if w.text.is_empty() {
                        words.pop();
                    }
                }
                None | Some('\n') | Some('}') => return Ok(words),
                Some(';') => {
                    self.pos += 1;
                    return Ok(words);
                }
                Some('#') => {
                    self.skip_comment();
                    return Ok(words);
                }
                Some('{') => return err(self.line, "unexpected `{` in a value"),
                Some('"') | Some('\'') => words.push(Word { text: self.quoted()?, quoted: true }),
                Some(_) => words.push(Word { text: self.bare(false), quoted: false }),
            }
        }
    }

    fn run(mut self, origin: &dyn Fn(usize) -> Origin) -> Result<Vec<Assignment>, SyntaxError> {
        let mut out = Vec::new();
        // Open scopes: (full dotted prefix, line of the opening brace, disabled).
        let mut scopes: Vec<(String, usize, bool)> = Vec::new();
        loop {
            self.skip_blank();
            let Some(c) = self.peek() else { break };
            let line = self.line;
            match c {
                '}' => {
                    if scopes.pop().is_none() {
                        return err(line, "unmatched `}`");
                    }
                    self.bump();
                    continue;
                }
                '{' => return err(line, "`{` without a scope name before it"),
                '=' => return err(line, "`=` without a parameter name before it"),
                '"' | '\'' => return err(line, "expected a parameter name, found a quoted string"),
                _ => {}
            }
            let mut name = self.bare(true);
            let disabled = name.starts_with('!') || scopes.last().is_some_and(|s| s.2);
            if let Some(n) = name.strip_prefix('!') {
                name = n.to_string();
            }
            if name == "include" {
                return err(line, "`include` is not supported: give each phil file on the command line");
            }
            if name.starts_with('.') {
                return err(line, format!("`{name}`: attribute lines (.type, .help, …) belong in master phil, not in parameter files"));
            }
            if !is_valid_name(&name) {
                return err(line, format!("expected a parameter name, found `{name}`"));
            }
            let full = match scopes.last() {
                Some((prefix, _, _)) => format!("{prefix}.{name}"),
                None => name.clone(),
            };
            self.skip_blank();
            match self.peek() {
                Some('=') => {
                    self.bump();
                    let words = self.value_words()?;
                    if words.is_empty() {
                        return err(line, format!("`{name} =` has no value (write None to unset it)"));
                    }
                    if !disabled {
                        out.push(Assignment { name: full, words, origin: origin(line) });
                    }
                }
                Some('{') => {
                    self.bump();
                    scopes.push((full, line, disabled));
                }
                _ => return err(line, format!("expected `=` or `{{` after `{name}`")),
            }
        }
        if let Some((name, line, _)) = scopes.last() {
            return err(*line, format!("scope `{name}` opened here is never closed (missing `}}`)"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<(String, Vec<String>, usize)> {
        parse_file_text(text, Path::new("/x.phil"))
            .unwrap()
            .into_iter()
            .map(|a| {
                let line = match a.origin {
                    Origin::File { line, .. } => line,
                    _ => 0,
                };
                (a.name, a.words.into_iter().map(|w| w.text).collect(), line)
            })
            .collect()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn nested_dotted_and_inline() {
        let got = p("a { b { c = 1 } }\na.b.d=2 3\nx.y {\n  z = \"q r\" # c\n}\ne\n{\nf = [1,40]\n}\n");
        assert_eq!(
            got,
            vec![
                ("a.b.c".into(), s(&["1"]), 1),
                ("a.b.d".into(), s(&["2", "3"]), 2),
                ("x.y.z".into(), s(&["q r"]), 4),
                ("e.f".into(), s(&["[1,40]"]), 8),
            ]
        );
    }

    #[test]
    fn comments_quotes_and_choices() {
        let got =
            p("m = *diffbragg exascale # not 'this'\nc = \"F-model,PHIF-model\"\nh = 'a#b' # x\n# k = 3\n");
        assert_eq!(got[0].1, s(&["*diffbragg", "exascale"]));
        assert_eq!(got[1].1, s(&["F-model,PHIF-model"]));
        assert_eq!(got[2].1, s(&["a#b"]));
        assert_eq!(got.len(), 3);
        let a = parse_file_text("q = \"None\"\n", Path::new("/x")).unwrap();
        assert!(a[0].words[0].quoted);
    }

    #[test]
    fn value_may_contain_equals_and_ends_at_brace() {
        let got = p("a { b = x=y }\n");
        assert_eq!(got, vec![("a.b".into(), s(&["x=y"]), 1)]);
    }

    #[test]
    fn errors_carry_lines() {
        let e = |t: &str| parse_file_text(t, Path::new("/x")).unwrap_err();
        assert_eq!(e("a {\n b = 1\n").line, 1);
        assert!(e("a {\n b = 1\n").msg.contains("never closed"));
        assert_eq!(e("a = 1\n}\n").line, 2);
        assert_eq!(e("a = 1\nb\nc = 2").line, 2);
        assert_eq!(e("x = \"abc\n\n").line, 1);
        assert_eq!(e("\n\nfoo bar = 1").line, 3);
        assert_eq!(e("a =\n").line, 1);
        assert!(e("  .type = int\n").msg.contains("master phil"));
        assert_eq!(e("1abc = 2").line, 1);
    }

    #[test]
    fn libtbx_details() {
        let got = p("a = 1; b = 2\nc = 3 \\\n  4 5\n!d = 6\n!e { f = 7 }\ng = 8\n#phil __OFF__\nh = 9\n#phil __ON__\ni = 10\n#phil __END__\nj = }\n");
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "g", "i"]);
        assert_eq!(got[2].1, s(&["3", "4", "5"]));
        let q = p("x = \"C:\\dir\\n\" 'it\\'s' \"\"\"tri\"ple\"\"\" \"a\\\\b\"\n");
        assert_eq!(q[0].1, s(&["C:\\dir\\n", "it's", "tri\"ple", "a\\b"]));
        let e = parse_file_text("include scope x.y\n", Path::new("/x")).unwrap_err();
        assert!(e.msg.contains("include"));
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let t = "a {".repeat(5_000);
        assert!(parse_file_text(&t, Path::new("/x")).is_err());
        let t = format!("{}b = 1{}", "a {".repeat(5_000), "}".repeat(5_000));
        assert_eq!(parse_file_text(&t, Path::new("/x")).unwrap().len(), 1);
    }
}
