//! What LLM tokens cost. Prices come per model from `[[llm.prices]]` in
//! the currency `llm.currency`, per million prompt (input) and answer
//! (output) tokens. Every amount is kept as an integer number of millionths
//! of the currency unit ("micros"), as the chat record stores it: sums of
//! many small costs never drift the way floating point would. Prices are
//! read from the config once, rounded to the micro; each answer's cost is
//! rounded up to the next micro (at most a millionth of the unit per
//! answer, in the provider's favour, so a budget is never overrun by
//! rounding).

use serde::{Deserialize, Serialize};

/// Millionths of the currency unit in one unit.
pub const MICROS_PER_UNIT: u64 = 1_000_000;

/// Tokens a price is quoted for.
const TOKENS_PER_PRICE: u128 = 1_000_000;

/// The largest amount a price or budget may be (currency units): far above
/// any real price, and small enough that its micros and any cost computed
/// from it fit comfortably in 64 bits.
pub const MAX_AMOUNT: f64 = 1_000_000_000.0;

/// One `[[llm.prices]]` entry: what a model's tokens cost.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// The model's name as sent to the provider.
    pub model: String,
    /// Currency units per million prompt tokens.
    pub input_per_million: f64,
    /// Currency units per million answer tokens.
    pub output_per_million: f64,
}

impl PriceConfig {
    /// The price in micros; `None` if either amount is negative, not a
    /// number or above [`MAX_AMOUNT`].
    pub fn price(&self) -> Option<Price> {
        Some(Price {
            input: micros(self.input_per_million)?,
            output: micros(self.output_per_million)?,
        })
    }
}

/// A model's price in micros per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    /// Micros per million prompt tokens.
    pub input: u64,
    /// Micros per million answer tokens.
    pub output: u64,
}

impl Price {
    /// What `input` prompt and `output` answer tokens cost (micros), rounded
    /// up to the next micro.
    pub fn cost(self, input: u64, output: u64) -> u64 {
        // Each product fits in 128 bits; their sum may not.
        let total = (u128::from(input) * u128::from(self.input))
            .saturating_add(u128::from(output) * u128::from(self.output));
        u64::try_from(total.div_ceil(TOKENS_PER_PRICE)).unwrap_or(u64::MAX)
    }
}

/// `amount` currency units in micros, rounded to the nearest; `None` if it
/// is negative, not a number or above [`MAX_AMOUNT`].
pub fn micros(amount: f64) -> Option<u64> {
    if !amount.is_finite() || !(0.0..=MAX_AMOUNT).contains(&amount) {
        return None;
    }
    // In range: at most 10^15 micros, exact in an f64 and in a u64.
    Some((amount * MICROS_PER_UNIT as f64).round() as u64)
}

/// `micros` written for people in `currency`: "$0.0123", "€1.50",
/// "12.34 RUB". Four decimals (two when the rest are zeros); an amount too
/// small for four shows six, so a spend is never shown as nothing.
pub fn format_money(micros: u64, currency: &str) -> String {
    let (decimals, step) = if micros == 0 || micros >= 100 {
        (4, 100)
    } else {
        (6, 1)
    };
    // Rounded to the nearest, halves up.
    let scaled = micros.saturating_add(step / 2) / step;
    let scale = 10u64.pow(decimals);
    let mut fraction = format!("{:0width$}", scaled % scale, width = decimals as usize);
    while fraction.len() > 2 && fraction.ends_with('0') {
        fraction.pop();
    }
    let amount = format!("{}.{fraction}", scaled / scale);
    match currency {
        "USD" => format!("${amount}"),
        "EUR" => format!("€{amount}"),
        "GBP" => format!("£{amount}"),
        code => format!("{amount} {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_add_up_in_micros_without_drift() {
        // Groq's llama-3.1-8b-instant: $0.05 in, $0.08 out per million.
        let price = PriceConfig {
            model: "m".into(),
            input_per_million: 0.05,
            output_per_million: 0.08,
        }
        .price()
        .unwrap();
        assert_eq!(
            price,
            Price {
                input: 50_000,
                output: 80_000
            }
        );
        // 1,000 prompt and 200 answer tokens: 50 + 16 micros.
        assert_eq!(price.cost(1_000, 200), 66);
        // Ten thousand such answers cost exactly ten thousand times one.
        let total: u64 = (0..10_000).map(|_| price.cost(1_000, 200)).sum();
        assert_eq!(total, 660_000);
        // A fraction of a micro is rounded up, never lost.
        assert_eq!(price.cost(1, 0), 1);
        assert_eq!(price.cost(0, 0), 0);
        // Free models cost nothing; huge counts saturate, never wrap.
        assert_eq!(Price::default().cost(u64::MAX, u64::MAX), 0);
        let dear = Price {
            input: u64::MAX,
            output: u64::MAX,
        };
        assert_eq!(dear.cost(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn amounts_are_read_to_the_micro() {
        assert_eq!(micros(0.0), Some(0));
        assert_eq!(micros(0.59), Some(590_000));
        assert_eq!(micros(0.000_000_4), Some(0));
        assert_eq!(micros(12.345_678_9), Some(12_345_679));
        assert_eq!(micros(-0.01), None);
        assert_eq!(micros(f64::NAN), None);
        assert_eq!(micros(f64::INFINITY), None);
        assert_eq!(micros(MAX_AMOUNT * 2.0), None);
    }

    #[test]
    fn money_is_written_for_people() {
        assert_eq!(format_money(12_345, "USD"), "$0.0123");
        assert_eq!(format_money(12_350, "USD"), "$0.0124");
        assert_eq!(format_money(5_000_000, "USD"), "$5.00");
        assert_eq!(format_money(1_500_000, "EUR"), "€1.50");
        assert_eq!(format_money(0, "GBP"), "£0.00");
        assert_eq!(format_money(66, "USD"), "$0.000066");
        assert_eq!(format_money(12_340_000, "RUB"), "12.34 RUB");
    }
}
