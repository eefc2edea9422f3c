//! 128-bit divisions made in 64 bits when both operands fit (the usual
//! case): a 128-bit division is a library call, and the responder's
//! buckets and the simulator's links divide on every request and message.

/// `a / b`.
#[cfg_attr(not(feature = "sim"), allow(dead_code))]
pub(crate) fn div(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) => u128::from(a / b),
        _ => a / b,
    }
}

/// `a.div_ceil(b)`.
pub(crate) fn div_ceil(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) => u128::from(a.div_ceil(b)),
        _ => a.div_ceil(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_widths_give_the_library_quotients() {
        let max = u128::from(u64::MAX);
        for (a, b) in [
            (0, 1),
            (7, 2),
            (8, 2),
            (max, 3),
            (max, max),
            (max + 1, 3),
            (u128::MAX, 7),
            (5, max + 1),
        ] {
            assert_eq!(div(a, b), a / b, "{a} / {b}");
            assert_eq!(div_ceil(a, b), a.div_ceil(b), "{a} / {b}, rounded up");
        }
    }
}
