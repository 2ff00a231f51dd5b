//! Splitting a command line into program and arguments, for shell jobs with `shell = false`.
//!
//! Dkron splits such commands with go-shellwords; we follow the same POSIX quoting rules (single quotes,
//! double quotes, backslash escapes) and, like it, expand nothing: no variables, globs, pipes or
//! redirections. Jobs that need those set `shell = true`.

/// Splits `line` into words, or says why it cannot.
pub(crate) fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word exists once any character or quote was seen, so that `''` yields an empty argument.
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".to_owned()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            // Inside double quotes a backslash escapes only these characters.
                            Some(c @ ('$' | '`' | '"' | '\\')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".to_owned()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".to_owned()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err("ends with an unfinished backslash escape".to_owned()),
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split;

    fn ok(line: &str) -> Vec<String> {
        split(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn splits_on_unquoted_whitespace() {
        assert_eq!(ok("  echo  a\tb \n c "), ["echo", "a", "b", "c"]);
        assert!(ok("   ").is_empty());
    }

    #[test]
    fn quotes_group_and_are_removed() {
        assert_eq!(ok(r#"echo 'a b' "c d" e'f'"g""#), ["echo", "a b", "c d", "efg"]);
        assert_eq!(ok("printf '' x"), ["printf", "", "x"]);
        assert_eq!(ok(r#"echo '$HOME' "it's""#), ["echo", "$HOME", "it's"]);
    }

    #[test]
    fn backslashes_escape_outside_quotes_and_selectively_inside_double_quotes() {
        assert_eq!(ok(r"a\ b c\'d"), ["a b", "c'd"]);
        assert_eq!(ok(r#""\"x\" \n \\""#), [r#""x" \n \"#]);
        assert_eq!(ok(r"'\n'"), [r"\n"]);
    }

    #[test]
    fn expands_nothing() {
        assert_eq!(ok("echo $HOME *|wc"), ["echo", "$HOME", "*|wc"]);
    }

    #[test]
    fn rejects_unterminated_quotes_and_escapes() {
        assert!(split("echo 'a").is_err());
        assert!(split("echo \"a").is_err());
        assert!(split("echo \"a\\").is_err());
        assert!(split("echo a\\").is_err());
    }
}
