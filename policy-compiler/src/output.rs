//! Writing answers and messages without panicking. `println!` panics when the reader has
//! gone (`claimgate explain … | head` closes the pipe: EPIPE, since Rust ignores SIGPIPE);
//! every line the CLI prints goes through here instead. A closed standard output ends
//! the output quietly: the command's answer (its exit code) stands.

use std::io::{self, Write};

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
