//! Small statistics over measured samples.

/// The `p` quantile (0..=1) of sorted samples, by nearest rank; NaN when empty.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Sorts in place (NaN last) and returns the slice, for `quantile`.
pub fn sorted(values: &mut [f64]) -> &[f64] {
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

/// The median of the values that are numbers (NaN when there are none); with an
/// even count, the mean of the two middle ones.
pub fn median(values: &[f64]) -> f64 {
    let mut numbers: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    numbers.sort_by(|a, b| a.total_cmp(b));
    match numbers.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => numbers[n / 2],
        n => (numbers[n / 2 - 1] + numbers[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_medians() {
        let mut values = [5.0, 1.0, 3.0, 2.0, 4.0];
        let s = sorted(&mut values);
        assert_eq!((quantile(s, 0.0), quantile(s, 0.5), quantile(s, 1.0)), (1.0, 3.0, 5.0));
        assert_eq!(median(&[3.0, f64::NAN, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[1.0, 4.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
