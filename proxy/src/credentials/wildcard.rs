//! Wildcard patterns, as `[[iam.identities]]` ARNs (`*`) and MySQL host names (`%`, `_`) use
//! them.

/// Whether `text` matches `pattern`, where `many` stands for any run of characters and `one`,
/// if given, for exactly one. Linear backtracking on the last `many`: no recursion.
pub fn matches(pattern: &str, text: &str, many: char, one: Option<char>) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `many` was, and the text position it matched up to.
    let mut star: Option<(usize, usize)> = None;
    while let Some(&tc) = t.get(ti) {
        match p.get(pi) {
            Some(&c) if c == many => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == tc || Some(c) == one => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_none_or(|rest| rest.iter().all(|&c| c == many))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn runs_and_single_characters() {
        let glob = |p: &str, t: &str| matches(p, t, '*', None);
        assert!(glob("arn:aws:iam::1:role/app", "arn:aws:iam::1:role/app"));
        assert!(!glob("arn:aws:iam::1:role/app", "arn:aws:iam::1:role/app2"));
        assert!(glob(
            "arn:aws:iam::1:role/app-*",
            "arn:aws:iam::1:role/app-x"
        ));
        assert!(glob("arn:aws:iam::*:role/*", "arn:aws:iam::2:role/y"));
        assert!(!glob("arn:aws:iam::*:role/*", "arn:aws:iam::2:user/y"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("**a", "ba"));
        assert!(!glob("a_c", "abc"), "`_` is literal without `one`");
        let like = |p: &str, t: &str| matches(p, t, '%', Some('_'));
        assert!(like("10.0.0._", "10.0.0.7"));
        assert!(!like("10.0.0._", "10.0.0.17"));
        assert!(like("10.%", "10.1.2.3"));
        assert!(like("%", ""));
    }
}
