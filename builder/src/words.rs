//! The Dockerfile's word rules: splitting an instruction's arguments into
//! words with quotes and backslash escapes, and substituting `$VAR`,
//! `${VAR}`, `${VAR:-default}`, `${VAR:+alternative}` and `${VAR:?message}`
//! from the environment the instruction sees; without the colon (`${VAR-x}`)
//! they test whether VAR is set rather than whether it is non-empty. These are Docker's rules (BuildKit's
//! shell lexer), not a shell's: no globbing, no command substitution, and
//! single quotes keep `$` as it is.

use std::collections::BTreeMap;

/// An unterminated quote or `${`: what the error says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordError {
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(char),
    #[error("missing ':' in substitution")]
    BadSubstitution,
    /// `${VAR?message}` of a VAR that is not set (or, with `:?`, empty).
    #[error("{0}: {1}")]
    Required(String, String),
}

/// The environment an instruction expands against: `KEY=VALUE` strings, the
/// last one of a key winning (Docker's `Env` list).
pub fn env_map(env: &[String]) -> BTreeMap<String, String> {
    env.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

/// Splits `text` into words, removing quotes and escapes and substituting
/// variables from `env`. A quoted empty string is a word (`""`); runs of
/// unquoted white space separate words.
pub fn split_words(text: &str, env: &BTreeMap<String, String>) -> Result<Vec<String>, WordError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                } else {
                    word.push('\\');
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => word.push(n),
                        None => return Err(WordError::Unterminated('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&n @ ('"' | '\\' | '$')) => {
                                chars.next();
                                word.push(n);
                            }
                            _ => word.push('\\'),
                        },
                        Some('$') => expand(&mut chars, env, &mut word)?,
                        Some(n) => word.push(n),
                        None => return Err(WordError::Unterminated('"')),
                    }
                }
            }
            '$' => {
                in_word = true;
                expand(&mut chars, env, &mut word)?;
            }
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

/// Substitutes variables in `text` as one word, quotes and escapes
/// removed: what WORKDIR, USER and STOPSIGNAL take (words separated by
/// white space come back joined by one space).
pub fn expand_word(text: &str, env: &BTreeMap<String, String>) -> Result<String, WordError> {
    Ok(split_words(text, env)?.join(" "))
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// After a `$`: appends the variable's value (or the `$` itself when no name follows).
fn expand(chars: &mut Chars, env: &BTreeMap<String, String>, out: &mut String) -> Result<(), WordError> {
    let lookup = |name: &str| env.get(name).cloned();
    match chars.peek() {
        Some('{') => {
            chars.next();
            let mut name = String::new();
            let (colon, op) = loop {
                match chars.next() {
                    Some('}') => {
                        out.push_str(&lookup(&name).unwrap_or_default());
                        return Ok(());
                    }
                    Some(':') => break (true, chars.next().ok_or(WordError::Unterminated('}'))?),
                    Some(c @ ('-' | '+' | '?')) if !name.is_empty() => break (false, c),
                    Some(c) => name.push(c),
                    None => return Err(WordError::Unterminated('}')),
                }
            };
            let mut word = String::new();
            let mut depth = 0;
            loop {
                match chars.next() {
                    Some('}') if depth == 0 => break,
                    Some(c) => {
                        depth += (c == '{') as i32 - (c == '}') as i32;
                        word.push(c);
                    }
                    None => return Err(WordError::Unterminated('}')),
                }
            }
            // With the colon an empty value counts as unset.
            let value = lookup(&name).filter(|v| !(colon && v.is_empty()));
            let word = split_words(&word, env)?.join(" ");
            match (op, value) {
                ('-', Some(v)) => out.push_str(&v),
                ('-', None) => out.push_str(&word),
                ('+', Some(_)) => out.push_str(&word),
                ('+', None) => {}
                ('?', Some(v)) => out.push_str(&v),
                ('?', None) => {
                    let message = if word.is_empty() { "is not set".to_string() } else { word };
                    return Err(WordError::Required(name, message));
                }
                _ => return Err(WordError::BadSubstitution),
            }
            Ok(())
        }
        Some(&c) if c.is_ascii_alphanumeric() || c == '_' => {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if !(c.is_ascii_alphanumeric() || c == '_') {
                    break;
                }
                name.push(c);
                chars.next();
            }
            out.push_str(&lookup(&name).unwrap_or_default());
            Ok(())
        }
        _ => {
            out.push('$');
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        env_map(&["HOME=/root".into(), "EMPTY=".into(), "A=x y".into()])
    }

    #[test]
    fn quotes_escapes_and_space() {
        let w = split_words(r#"a  "b c" 'd $HOME' e\ f "" g\"h "i\"j\k""#, &env()).unwrap();
        assert_eq!(w, ["a", "b c", "d $HOME", "e f", "", "g\"h", "i\"j\\k"]);
    }

    #[test]
    fn variables() {
        let w = split_words(r#"$HOME ${HOME}/x "$A" ${NONE:-dflt} ${HOME:+alt} ${EMPTY:-e} ${NONE:+no}z $"#, &env())
            .unwrap();
        assert_eq!(w, ["/root", "/root/x", "x y", "dflt", "alt", "e", "z", "$"]);
    }

    #[test]
    fn unterminated_quotes_are_errors() {
        assert_eq!(split_words("\"abc", &env()), Err(WordError::Unterminated('"')));
        assert_eq!(split_words("'abc", &env()), Err(WordError::Unterminated('\'')));
        assert_eq!(split_words("${abc", &env()), Err(WordError::Unterminated('}')));
        assert_eq!(split_words("${a:=x}", &env()), Err(WordError::BadSubstitution));
    }

    #[test]
    fn without_the_colon_set_is_what_counts() {
        let w = split_words("${NONE-dash} ${EMPTY-dash}. ${EMPTY+plus} ${NONE+plus}. ${EMPTY:+plus}.", &env()).unwrap();
        assert_eq!(w, ["dash", ".", "plus", ".", "."]);
        assert_eq!(split_words("${HOME?gone} ${EMPTY?x}.", &env()).unwrap(), ["/root", "."]);
        assert_eq!(
            split_words("${NONE?needs a value}", &env()),
            Err(WordError::Required("NONE".into(), "needs a value".into()))
        );
        assert_eq!(split_words("${EMPTY:?}", &env()), Err(WordError::Required("EMPTY".into(), "is not set".into())));
    }
}
