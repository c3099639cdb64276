//! Writing answers and messages without panicking. `println!` panics when the reader has
//! gone (`claimgate explain … | head` closes the pipe: EPIPE, since Rust ignores SIGPIPE);
//! every line the CLI prints goes through here instead. A closed standard output ends
//! the output quietly: the command's answer (its exit code) stands.
//!
//! Diagnostics are rendered here too, rustc-style, with a snippet of the policy.

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use annotate_snippets::{AnnotationKind, Level, Origin, Renderer, Snippet};
use claimgate_core::compile::{Diagnostic, Severity};

/// Writes `text` to standard output. Only a real write failure (not a reader that went
/// away) is an error.
pub fn out(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes `text` and a newline to standard output (see [`out`]).
pub fn outln(text: &str) -> io::Result<()> {
    out(&format!("{text}\n"))
}

/// Writes `text` and a newline to standard error; a failure has nowhere to be reported and
/// is dropped.
pub fn errln(text: &str) {
    let mut stderr = io::stderr().lock();
    let _ = stderr
        .write_all(text.as_bytes())
        .and_then(|()| stderr.write_all(b"\n"));
}

/// The policy texts read in this run, by the file name diagnostics carry: a diagnostic is
/// shown with a snippet of the very text it was found in (a file read again could have
/// changed, and standard input cannot be read again).
static SOURCES: Mutex<Vec<(String, Arc<str>)>> = Mutex::new(Vec::new());

/// Keeps `text` as the source of `file` for [`render_diagnostic`], with every
/// `hmac_secret` value masked: snippets land in terminals and CI logs.
pub fn remember_source(file: &str, text: &str) {
    let masked = mask_secrets(text);
    if let Ok(mut sources) = SOURCES.lock() {
        sources.retain(|(name, _)| name != file);
        sources.push((file.to_owned(), Arc::from(masked.as_str())));
    }
}

/// `text` with the quoted value after each `hmac_secret =` replaced by `*`, byte for byte
/// (a multi-byte character becomes as many `*`), so every diagnostic span still fits.
pub fn mask_secrets(text: &str) -> String {
    const KEY: &str = "hmac_secret";
    let mut bytes = text.as_bytes().to_vec();
    let mut from = 0;
    while let Some(found) = text.get(from..).and_then(|rest| rest.find(KEY)) {
        let mut at = from + found + KEY.len();
        from = at;
        // Optional quotes around the key, spaces, `=`, spaces, then the opening quote.
        let skip = |at: &mut usize, set: &[u8]| {
            while bytes.get(*at).is_some_and(|b| set.contains(b)) {
                *at += 1;
            }
        };
        skip(&mut at, b"\"' \t");
        if bytes.get(at) != Some(&b'=') {
            continue;
        }
        at += 1;
        skip(&mut at, b" \t");
        let Some(&quote) = bytes.get(at).filter(|b| **b == b'"' || **b == b'\'') else {
            continue;
        };
        at += 1;
        let mut escaped = false;
        while let Some(byte) = bytes.get_mut(at) {
            if (*byte == quote && !escaped) || *byte == b'\n' {
                break;
            }
            escaped = quote == b'"' && *byte == b'\\' && !escaped;
            *byte = b'*';
            at += 1;
        }
    }
    String::from_utf8(bytes).unwrap_or_default()
}

fn source_of(file: &str) -> Option<Arc<str>> {
    let sources = SOURCES.lock().ok()?;
    sources
        .iter()
        .find(|(name, _)| name == file)
        .map(|(_, text)| Arc::clone(text))
}

/// Renders a diagnostic as rustc does (annotate-snippets, the renderer rustc and cargo
/// use): the message with its kind, the file, line and column, the source line with the
/// place underlined, and the hint as `help:`. Without its source (or when the span does
/// not fit it) the place is given as `file:line:column` alone.
pub fn render_diagnostic(diagnostic: &Diagnostic, source: Option<&str>, colour: bool) -> String {
    let level = match diagnostic.severity {
        Severity::Error => Level::ERROR,
        Severity::Warning => Level::WARNING,
        Severity::Note => Level::NOTE,
    };
    let title = level
        .primary_title(diagnostic.message.as_str())
        .id(diagnostic.kind);
    let span = &diagnostic.span;
    let fits = |text: &&str| {
        span.start <= span.end
            && text.is_char_boundary(span.start)
            && text.is_char_boundary(span.end)
    };
    let group = match source.filter(fits) {
        Some(text) => title.element(
            Snippet::source(text)
                .path(diagnostic.file.as_str())
                .fold(true)
                .annotation(AnnotationKind::Primary.span(span.clone())),
        ),
        None => title.element(
            Origin::path(diagnostic.file.as_str())
                .line(diagnostic.line)
                .char_column(diagnostic.column),
        ),
    };
    let group = match &diagnostic.hint {
        Some(hint) => group.element(Level::HELP.message(hint.as_str())),
        None => group,
    };
    let renderer = if colour {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    renderer.render(&[group])
}

/// Prints diagnostics to standard error, rustc-style, in colour on a terminal (unless
/// `NO_COLOR` is set).
pub fn print_diagnostics(diagnostics: &[Diagnostic]) {
    let colour = io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for diagnostic in diagnostics.iter().take(MAX_RENDERED) {
        let source = source_of(&diagnostic.file);
        errln(&render_diagnostic(diagnostic, source.as_deref(), colour));
        errln("");
    }
    if diagnostics.len() > MAX_RENDERED {
        errln(&format!(
            "... and {} more not shown (`check --json` lists every one)\n",
            diagnostics.len() - MAX_RENDERED
        ));
    }
}

/// How many diagnostics are rendered with snippets in one run: past it, more help nobody,
/// and each costs a pass over the source.
const MAX_RENDERED: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_secrets_are_masked_in_snippets_and_spans_still_fit() {
        let text = "[issuers.a]\nhmac_secret = \"TOP\\\"SECRété\"\nx = 1\n[issuers.b]\n{ \"hmac_secret\" = 'LIT' }\n";
        let masked = mask_secrets(text);
        assert_eq!(masked.len(), text.len());
        assert!(
            !masked.contains("TOP") && !masked.contains("SECR") && !masked.contains("LIT"),
            "{masked}"
        );
        assert!(
            masked.contains("hmac_secret = \"*") && masked.contains("x = 1"),
            "{masked}"
        );
        assert_eq!(mask_secrets("hmac_secret_hint = 1"), "hmac_secret_hint = 1");
    }

    fn diagnostic(span: std::ops::Range<usize>, line: usize, column: usize) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            kind: "unknown_field",
            message: "unknown field `nmae` in `[[rules]]` #1".to_owned(),
            hint: Some("did you mean `name`?".to_owned()),
            file: "policy.toml".to_owned(),
            line,
            column,
            span,
        }
    }

    #[test]
    fn diagnostics_show_the_source_line_with_the_place_underlined() {
        let text = "version = 1\n[[rules]]\nnmae = \"r\"\nallow = \"anyone\"\n";
        let start = text.find("nmae").unwrap();
        let rendered = render_diagnostic(&diagnostic(start..start + 4, 3, 1), Some(text), false);
        assert_eq!(
            rendered,
            "error[unknown_field]: unknown field `nmae` in `[[rules]]` #1\n \
             --> policy.toml:3:1\n  \
             |\n\
             3 | nmae = \"r\"\n  \
             | ^^^^\n  \
             |\n  \
             = help: did you mean `name`?"
        );
    }

    #[test]
    fn without_its_source_a_diagnostic_names_its_place() {
        let rendered = render_diagnostic(&diagnostic(40..44, 3, 1), Some("short"), false);
        assert_eq!(
            rendered,
            "error[unknown_field]: unknown field `nmae` in `[[rules]]` #1\n\
             --> policy.toml:3:1\n \
             = help: did you mean `name`?"
        );
    }
}
