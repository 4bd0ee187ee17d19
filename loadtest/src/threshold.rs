//! k6 threshold expressions: `p(99)<50`, `avg<=10`, `max<200`, `rate<0.001`,
//! `count>100`, `med<5`, `min>0`, `value>=10` (gauges). Values are in the metric's unit (ms for
//! trends).

use std::fmt;

/// Which statistic of a metric a threshold reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Stat {
    Avg,
    Min,
    Max,
    Med,
    Percentile(f64),
    Rate,
    Count,
    /// A gauge's value (k6 `value`).
    Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// One parsed threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub source: String,
    pub stat: Stat,
    pub op: Op,
    pub value: f64,
    /// Stop the run as soon as this threshold fails (k6 `abortOnFail`).
    pub abort_on_fail: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("bad threshold {0:?}: {1}")]
pub struct ThresholdError(pub String, pub &'static str);

impl Threshold {
    pub fn parse(source: &str) -> Result<Threshold, ThresholdError> {
        let err = |why| ThresholdError(source.to_string(), why);
        let text: String = source.chars().filter(|c| !c.is_whitespace()).collect();
        let ops = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (at, op, len) = ops
            .iter()
            .filter_map(|(s, op)| text.find(s).map(|i| (i, *op, s.len())))
            .min_by_key(|(i, _, len)| (*i, usize::MAX - len))
            .ok_or_else(|| err("no comparison operator"))?;
        let (lhs, rhs) = (&text[..at], &text[at + len..]);
        let value: f64 = rhs
            .parse()
            .map_err(|_| err("the right side is not a number"))?;
        let stat = match lhs {
            "avg" => Stat::Avg,
            "min" => Stat::Min,
            "max" => Stat::Max,
            "med" => Stat::Med,
            "rate" => Stat::Rate,
            "count" => Stat::Count,
            "value" => Stat::Value,
            p if p.starts_with("p(") && p.ends_with(')') => {
                let q: f64 = p[2..p.len() - 1]
                    .parse()
                    .map_err(|_| err("bad percentile"))?;
                if !(0.0..=100.0).contains(&q) {
                    return Err(err("percentile must be within 0..100"));
                }
                Stat::Percentile(q)
            }
            _ => return Err(err("unknown statistic")),
        };
        Ok(Threshold {
            source: source.to_string(),
            stat,
            op,
            value,
            abort_on_fail: false,
        })
    }

    /// Does `observed` pass?
    pub fn passes(&self, observed: f64) -> bool {
        match self.op {
            Op::Lt => observed < self.value,
            Op::Le => observed <= self.value,
            Op::Gt => observed > self.value,
            Op::Ge => observed >= self.value,
            Op::Eq => observed == self.value,
            Op::Ne => observed != self.value,
        }
    }
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stat::Avg => f.write_str("avg"),
            Stat::Min => f.write_str("min"),
            Stat::Max => f.write_str("max"),
            Stat::Med => f.write_str("med"),
            Stat::Percentile(q) => write!(f, "p({q})"),
            Stat::Rate => f.write_str("rate"),
            Stat::Count => f.write_str("count"),
            Stat::Value => f.write_str("value"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_k6_forms() {
        let t = Threshold::parse("p(99)<50").expect("valid");
        assert_eq!(t.stat, Stat::Percentile(99.0));
        assert_eq!(t.op, Op::Lt);
        assert_eq!(t.value, 50.0);
        assert_eq!(Threshold::parse("p(99.9) <= 5").expect("valid").op, Op::Le);
        assert_eq!(
            Threshold::parse("rate<0.001").expect("valid").stat,
            Stat::Rate
        );
        assert_eq!(Threshold::parse("count>=100").expect("valid").op, Op::Ge);
        assert_eq!(Threshold::parse("avg!=3").expect("valid").op, Op::Ne);
        assert!(Threshold::parse("p(101)<5").is_err());
        assert!(Threshold::parse("pp(1)<5").is_err());
        assert!(Threshold::parse("avg 5").is_err());
        assert!(Threshold::parse("avg<x").is_err());
    }

    #[test]
    fn evaluates_comparisons() {
        let t = Threshold::parse("p(95)<=10").expect("valid");
        assert!(t.passes(10.0));
        assert!(!t.passes(10.5));
        assert!(Threshold::parse("count>0").expect("valid").passes(1.0));
    }
}
