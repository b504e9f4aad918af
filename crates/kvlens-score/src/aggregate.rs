//! Dataset scores as LongBench prints them, and Python's `str()` of answers.

/// `round(100 * np.mean(scores), 2)`, the dataset score of LongBench's `eval.py` (`scorer_e`),
/// bit for bit with NumPy 2.x:
/// - `np.mean` of a float64 array sums it pairwise ([`numpy_sum`]) and divides by the count;
/// - `100 * mean` is a `np.float64`, so `round(..., 2)` is NumPy's `np.round`:
///   `rint(x * 100) / 100` (half to even on the scaled double), not Python's correctly
///   rounded `round` on floats (the two differ for about 3 in 100 values).
///
/// An empty list is `nan` in NumPy (with a warning); here too. NumPy 1.x summed in blocks of
/// 8192 elements, which changes the last bits for longer lists only.
pub fn dataset_score(scores: &[f64]) -> f64 {
    let mean = numpy_sum(scores) / scores.len() as f64;
    let x = 100.0 * mean;
    (x * 100.0).round_ties_even() / 100.0
}

/// `round(100 * total_score / len(predictions), 2)` of LongBench `eval.py`'s `scorer` (the
/// default, non-`--e` path): a left-to-right sum of Python floats and Python's correctly
/// rounded `round`. Differs from [`dataset_score`] in rare last-digit cases. `nan` when empty
/// (Python raises ZeroDivisionError).
pub fn dataset_score_sequential(scores: &[f64]) -> f64 {
    let total: f64 = scores.iter().fold(0.0, |sum, s| sum + s);
    python_round(100.0 * total / scores.len() as f64, 2)
}

/// Python's `round(x, ndigits)` for a float: the exact binary value rounded half to even at
/// `ndigits` decimals, then the nearest double. Rust's fixed-precision formatting is exact
/// and rounds exact ties to even, as CPython's `_Py_dg_dtoa` mode 3 does.
pub fn python_round(x: f64, ndigits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.ndigits$}").parse().unwrap_or(x)
}

/// NumPy's pairwise summation of a contiguous float64 array (`pairwise_sum` in
/// `loops_utils.h.src`): below 8 elements a plain loop; up to 128, eight interleaved
/// accumulators combined as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)) and the remainder added
/// one by one; above, split at a multiple of 8 near the middle.
pub fn numpy_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, x| s + x)
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        for chunk in a[8..whole].chunks_exact(8) {
            for (acc, x) in r.iter_mut().zip(chunk) {
                *acc += x;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for x in &a[whole..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_sum(&a[..n2]) + numpy_sum(&a[n2..])
    }
}

/// Python's `str(value)` of a JSON scalar as `json.loads` would give it to Python: strings as
/// they are, integers in decimal, floats as `repr` prints them (`1.0`, `1e+16`, `1e-05`),
/// `True`/`False`/`None`. `None` for arrays and objects.
pub fn python_str(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    Some(match value {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                python_float_repr(n.as_f64()?)
            }
        }
        Value::Array(_) | Value::Object(_) => return None,
    })
}

/// `repr(float)`: the shortest digits that round-trip, in positional notation when the decimal
/// exponent is from -4 to 15, else in exponent notation with a sign and at least two exponent
/// digits.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` prints the same shortest round-trip digits: "1.5e16", "-2e-5".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        // Positional: place the point `exp + 1` digits from the left.
        let point = exp + 1;
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numpy_rounding_not_python_rounding() {
        assert_eq!(dataset_score(&[1.0, 0.0, 0.5]), 50.0);
        assert_eq!(dataset_score(&[1.0, 0.0, 0.0]), 33.33);
        // 100 * mean is 0.025 (just above, in binary): NumPy scales to 2.5 and rounds to even,
        // Python rounds the exact value up. Values from CPython 3.11 and NumPy 2.4.
        assert_eq!(dataset_score(&[0.001, 0.0, 0.0, 0.0]), 0.02);
        assert_eq!(dataset_score_sequential(&[0.001, 0.0, 0.0, 0.0]), 0.03);
        assert_eq!(dataset_score(&[0.003, 0.0, 0.0, 0.0]), 0.08);
        assert_eq!(dataset_score_sequential(&[0.003, 0.0, 0.0, 0.0]), 0.07);
        assert!(dataset_score(&[]).is_nan());
    }

    #[test]
    fn python_round_is_correctly_rounded() {
        assert_eq!(python_round(0.125, 2), 0.12);
        assert_eq!(python_round(0.375, 2), 0.38);
        assert_eq!(python_round(2.675, 2), 2.67);
        assert_eq!(python_round(2.5, 0), 2.0);
        assert_eq!(python_round(1.0 / 3.0 * 100.0, 2), 33.33);
    }

    #[test]
    fn python_str_of_answers() {
        assert_eq!(python_str(&json!(7)).unwrap(), "7");
        assert_eq!(python_str(&json!(-7)).unwrap(), "-7");
        assert_eq!(python_str(&json!(1.0)).unwrap(), "1.0");
        assert_eq!(python_str(&json!(0.1)).unwrap(), "0.1");
        assert_eq!(python_str(&json!(1e16)).unwrap(), "1e+16");
        assert_eq!(python_str(&json!(1.5e15)).unwrap(), "1500000000000000.0");
        assert_eq!(python_str(&json!(0.0001)).unwrap(), "0.0001");
        assert_eq!(python_str(&json!(0.00001)).unwrap(), "1e-05");
        assert_eq!(python_str(&json!(-2.5e-7)).unwrap(), "-2.5e-07");
        assert_eq!(python_str(&json!(true)).unwrap(), "True");
        assert_eq!(python_str(&json!(null)).unwrap(), "None");
        assert_eq!(python_str(&json!("x")).unwrap(), "x");
        assert!(python_str(&json!([1])).is_none());
    }
}
