//! Client-supplied text in logs (user names, schema names, statements, admin commands):
//! control characters and line or paragraph separators are escaped and the length is capped,
//! so a user name with a newline cannot forge a log line in the pretty format and a huge
//! statement cannot flood the log.

use std::fmt;

/// At most this many characters of one client string are logged.
pub const MAX_LOGGED_CHARS: usize = 128;

/// Displays a client string escaped (`\n`, `\u{1b}`, `\\`...) and cut at
/// [`MAX_LOGGED_CHARS`] characters, with the number of bytes left out.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shown, (i, c)) in self.0.char_indices().enumerate() {
            if shown == MAX_LOGGED_CHARS {
                return write!(f, "...(+{} bytes)", self.0.len() - i);
            }
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

/// Displays client bytes as [`Escaped`] text (invalid UTF-8 shown as U+FFFD).
#[derive(Debug, Clone, Copy)]
pub struct EscapedBytes<'a>(pub &'a [u8]);

impl fmt::Display for EscapedBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only what can be shown is decoded: a huge packet costs no more than the cap.
        let cut = self.0.len().min(MAX_LOGGED_CHARS * 4);
        let text = String::from_utf8_lossy(&self.0[..cut]);
        Escaped(&text).fmt(f)?;
        if cut < self.0.len() && text.chars().count() < MAX_LOGGED_CHARS {
            write!(f, "...(+{} bytes)", self.0.len() - cut)?;
        }
        Ok(())
    }
}

/// Control characters, and characters that end or reorder a line on a terminal.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_cannot_forge_a_log_line() {
        let forged = "bob\n2026-01-01T00:00:00Z  INFO sluice: admin logged in";
        let shown = Escaped(forged).to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.starts_with("bob\\n2026"), "{shown}");
        assert_eq!(Escaped("a\rb\tc\\d").to_string(), "a\\rb\\tc\\\\d");
        assert_eq!(Escaped("\u{1b}[31mred").to_string(), "\\u{1b}[31mred");
        assert_eq!(
            Escaped("x\u{2028}y\u{202e}").to_string(),
            "x\\u{2028}y\\u{202e}"
        );
        assert_eq!(Escaped("café 東京").to_string(), "café 東京");
    }

    #[test]
    fn long_strings_are_cut_with_the_rest_counted() {
        let long = "é".repeat(1000);
        let shown = Escaped(&long).to_string();
        assert!(shown.ends_with("...(+1744 bytes)"), "{shown}");
        assert_eq!(
            shown.chars().filter(|c| *c == 'é').count(),
            MAX_LOGGED_CHARS
        );
        let bytes = vec![b'a'; 10_000];
        let shown = EscapedBytes(&bytes).to_string();
        assert!(shown.len() < 200, "{shown}");
        assert!(shown.contains("(+"), "{shown}");
        assert_eq!(EscapedBytes(b"u\xffv\n").to_string(), "u\u{fffd}v\\n");
    }
}
