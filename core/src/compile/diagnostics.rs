//! Diagnostics: what the compiler reports, with file, line, column and a hint, and the
//! context that collects them so one run reports every problem it can find.

use std::ops::Range;

use serde::Serialize;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy does not compile.
    Error,
    /// The policy compiles, but probably not as meant.
    Warning,
    /// Worth knowing, expected in a sound policy (e.g. an encryption key skipped from a key
    /// set): shown, never counted as a warning (`--deny-warnings` passes).
    Note,
}

impl Severity {
    /// The word the CLI prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }
}

/// A problem found in a policy, with its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable kind, e.g. `unknown_issuer`.
    pub kind: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// File name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Byte range in the file (for snippets and editors).
    pub span: Range<usize>,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = self.severity.as_str();
        write!(
            f,
            "{}:{}:{}: {severity}[{}]: {}",
            self.file, self.line, self.column, self.kind, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Collects the diagnostics of one compilation. Every diagnostic the compiler raises itself
/// carries a hint (the parameter is not optional).
pub(super) struct Context<'a> {
    file: &'a str,
    text: &'a str,
    /// Byte offset of each line's start: positions are looked up, not counted from the top
    /// for every diagnostic (a policy with thousands of errors stays linear).
    line_starts: Vec<usize>,
    pub(super) diagnostics: Vec<Diagnostic>,
    /// Issuers left out because their table was reported as malformed: a rule naming one
    /// is not also told the issuer does not exist.
    pub(super) malformed_issuers: Vec<String>,
    /// Claim paths the rules' `claims` / `not_claims` name, interned (index = claim id).
    pub(super) claim_paths: Vec<crate::claims::ClaimPath>,
}

impl<'a> Context<'a> {
    pub(super) fn new(file: &'a str, text: &'a str) -> Context<'a> {
        Context {
            file,
            text,
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(at, _)| at + 1))
                .collect(),
            diagnostics: Vec::new(),
            malformed_issuers: Vec::new(),
            claim_paths: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(0, |l| l.chars().count())
            + 1;
        (line, column)
    }

    fn push(
        &mut self,
        severity: Severity,
        kind: &'static str,
        span: &Range<usize>,
        message: String,
        hint: String,
    ) {
        let (line, column) = self.position(span.start);
        let end = span.end.clamp(span.start, self.text.len());
        self.diagnostics.push(Diagnostic {
            severity,
            kind,
            message,
            hint: Some(hint),
            file: self.file.to_owned(),
            line,
            column,
            span: span.start.min(end)..end,
        });
    }

    /// The place of the string `literal` inside `span` (its first quoted occurrence), for a
    /// name inside a value the source types keep no place for (`allow = { … }`); `span`
    /// itself when it is not written plainly there.
    pub(super) fn narrow(&self, span: &Range<usize>, literal: &str) -> Range<usize> {
        let Some(within) = self.text.get(span.clone()) else {
            return span.clone();
        };
        ['"', '\'']
            .iter()
            .find_map(|quote| {
                let quoted = format!("{quote}{literal}{quote}");
                within
                    .find(&quoted)
                    .map(|at| span.start + at..span.start + at + quoted.len())
            })
            .unwrap_or_else(|| span.clone())
    }

    /// Records an error.
    pub(super) fn error(
        &mut self,
        kind: &'static str,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Severity::Error, kind, span, message.into(), hint.into());
    }

    /// Records a warning.
    pub(super) fn warn(
        &mut self,
        kind: &'static str,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Severity::Warning, kind, span, message.into(), hint.into());
    }

    /// Records a note.
    pub(super) fn note(
        &mut self,
        kind: &'static str,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Severity::Note, kind, span, message.into(), hint.into());
    }

    /// A mark to ask later whether errors were raised since ([`Context::errors_since`]).
    pub(super) fn mark(&self) -> usize {
        self.diagnostics.len()
    }

    /// Whether an error was raised after `mark`.
    pub(super) fn errors_since(&self, mark: usize) -> bool {
        self.diagnostics
            .iter()
            .skip(mark)
            .any(|d| d.severity == Severity::Error)
    }

    /// Whether any error was raised.
    pub(super) fn has_errors(&self) -> bool {
        self.errors_since(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let text = "a = 1\nnäme = \"x\"\n";
        let cx = Context::new("p.toml", text);
        assert_eq!(cx.position(0), (1, 1));
        assert_eq!(cx.position(6), (2, 1));
        let eq = text.find('=').map(|_| text.rfind('=').unwrap()).unwrap();
        assert_eq!(cx.position(eq), (2, 6));
        assert_eq!(cx.position(10_000), (3, 1));
    }

    #[test]
    fn names_inside_a_value_are_placed_where_they_are_written() {
        let text = "allow = { issuers = [\"kc\", 'entar'], roles_any = [\"\"] }\n";
        let cx = Context::new("p.toml", text);
        let value = 8..text.len() - 1;
        let entar = cx.narrow(&value, "entar");
        assert_eq!(text.get(entar), Some("'entar'"));
        let empty = cx.narrow(&value, "");
        assert_eq!(text.get(empty), Some("\"\""));
        assert_eq!(cx.narrow(&value, "okta"), value);
        assert_eq!(cx.narrow(&(5..500), "kc"), 5..500);
    }

    #[test]
    fn errors_carry_place_and_hint() {
        let mut cx = Context::new("p.toml", "x\ny = 2\n");
        let mark = cx.mark();
        cx.warn("w", &(0..1), "careful", "look");
        assert!(!cx.errors_since(mark));
        cx.error("bad", &(2..3), "wrong", "fix it");
        assert!(cx.errors_since(mark) && cx.has_errors());
        assert_eq!(
            cx.diagnostics[1].to_string(),
            "p.toml:2:1: error[bad]: wrong\n  hint: fix it"
        );
    }
}
