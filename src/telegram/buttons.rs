//! Inline keyboards and the callback data their buttons carry.
//!
//! A button press comes back as a callback query whose `data` is what the
//! button was given, at most [`MAX_DATA_BYTES`] bytes. The data is compact,
//! versioned (`r1:` is version 1 of Regenerate) and, since any client can
//! send any data, untrusted: [`Action::decode`] accepts only what
//! [`Action::encode`] writes, and the session answers anything else with a
//! polite notice and does nothing.
//!
//! | data | button |
//! |---|---|
//! | `r1:<answer id>:<asker>` | 🔄 Regenerate under a finished answer |
//! | `s1:<asker>` | ⏹ Stop on an answer being written |
//! | `p1:<persona name>` | a persona in the `/persona` picker |
//! | `m1:<model index>` | a model in the `/model` picker |
//! | `bm1:<draft\|auto\|off>` | a mode in the control room's `/mode` picker (Telegram Business) |
//! | `bd1:<s\|a\|e\|k>:<fan>:<n>` | ✅ Send, 🔄 Another, ✏️ Edit, 🚫 Skip under suggestion `n` for a fan (Telegram Business) |
//!
//! The answer id names the exchange the answer closes ([`answer_id`]): the
//! session checks it against the history, in memory or as stored, so a
//! press on any answer but the latest is refused and one after a restart
//! still works. The asker is the user whose message the answer answers
//! (who may press it in a group besides the group's admins).

use crate::config::BusinessMode;

/// Telegram's limit on a button's callback data, in bytes.
pub const MAX_DATA_BYTES: usize = 64;

/// One button: its label and its callback data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Button {
    /// What the button shows.
    pub label: String,
    /// What a press sends back ([`Action::encode`]).
    pub data: String,
}

/// An inline keyboard: rows of buttons.
pub type Keyboard = Vec<Vec<Button>>;

/// What a button does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer the exchange named by `answer` again.
    Regenerate {
        /// [`answer_id`] of the answer pressed on.
        answer: u64,
        /// Who asked (user id; 0 when Telegram named nobody).
        asker: u64,
    },
    /// Stop the answer being written (`/cancel`).
    Stop {
        /// Who asked (user id; 0 when Telegram named nobody).
        asker: u64,
    },
    /// Pick the persona of this name (`/persona <name>`).
    Persona(String),
    /// Pick the configured model at this index (`/model <name>`).
    Model(usize),
    /// Set the Business connection's mode (`/mode <mode>` in the control
    /// room).
    BusinessMode(BusinessMode),
    /// A button under a suggested reply to a fan (Telegram Business `draft`
    /// mode), in the creator's control room.
    Draft {
        /// What to do with it.
        op: DraftOp,
        /// The fan's chat (under the presser's connection).
        fan: u64,
        /// The suggestion's number in that chat.
        seq: u32,
    },
}

/// What a button under a suggestion does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftOp {
    /// ✅ Send it to the fan as the creator.
    Send,
    /// 🔄 Write another one.
    Another,
    /// ✏️ The creator's next message is the reply.
    Edit,
    /// 🚫 Send nothing.
    Skip,
}

impl DraftOp {
    const ALL: [Self; 4] = [Self::Send, Self::Another, Self::Edit, Self::Skip];

    fn letter(self) -> &'static str {
        match self {
            Self::Send => "s",
            Self::Another => "a",
            Self::Edit => "e",
            Self::Skip => "k",
        }
    }
}

impl Action {
    /// The callback data for this action; `None` when it would not fit
    /// [`MAX_DATA_BYTES`] (a persona name that long gets no button).
    pub fn encode(&self) -> Option<String> {
        let data = match self {
            Self::Regenerate { answer, asker } => format!("r1:{answer:x}:{asker}"),
            Self::Stop { asker } => format!("s1:{asker}"),
            Self::Persona(name) => format!("p1:{name}"),
            Self::Model(index) => format!("m1:{index}"),
            Self::BusinessMode(mode) => format!("bm1:{}", mode_word(*mode)),
            Self::Draft { op, fan, seq } => format!("bd1:{}:{fan}:{seq}", op.letter()),
        };
        (data.len() <= MAX_DATA_BYTES).then_some(data)
    }

    /// Reads callback data; `None` for anything [`Self::encode`] does not
    /// write (an older or newer version, or data a client made up).
    pub fn decode(data: &str) -> Option<Self> {
        if data.len() > MAX_DATA_BYTES {
            return None;
        }
        let (kind, rest) = data.split_once(':')?;
        match kind {
            "r1" => {
                let (answer, asker) = rest.split_once(':')?;
                Some(Self::Regenerate {
                    answer: u64::from_str_radix(answer, 16).ok()?,
                    asker: number(asker)?,
                })
            }
            "s1" => Some(Self::Stop {
                asker: number(rest)?,
            }),
            "p1" if !rest.is_empty() && !rest.chars().any(char::is_control) => {
                Some(Self::Persona(rest.to_owned()))
            }
            "m1" => Some(Self::Model(usize::try_from(number(rest)?).ok()?)),
            "bm1" => [BusinessMode::Draft, BusinessMode::Auto, BusinessMode::Off]
                .into_iter()
                .find(|mode| mode_word(*mode) == rest)
                .map(Self::BusinessMode),
            "bd1" => {
                let mut fields = rest.split(':');
                let letter = fields.next()?;
                let op = DraftOp::ALL.into_iter().find(|op| op.letter() == letter)?;
                let fan = number(fields.next()?).filter(|fan| *fan > 0)?;
                let seq = u32::try_from(number(fields.next()?)?).ok()?;
                fields
                    .next()
                    .is_none()
                    .then_some(Self::Draft { op, fan, seq })
            }
            _ => None,
        }
    }

    /// Whether a press costs an LLM call (against the per-user limit).
    /// 🔄 Another does too, but is limited as a fan message is (per fan
    /// and per connection), so it is not counted here.
    pub fn costs_llm_call(&self) -> bool {
        matches!(self, Self::Regenerate { .. })
    }
}

/// A mode as `/mode` and the `bm1:` data write it.
pub fn mode_word(mode: BusinessMode) -> &'static str {
    match mode {
        BusinessMode::Draft => "draft",
        BusinessMode::Auto => "auto",
        BusinessMode::Off => "off",
    }
}

/// A decimal number without sign or padding, as [`Action::encode`] writes.
fn number(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let canonical = text == "0" || !text.starts_with('0');
    (digits_only && canonical)
        .then(|| text.parse().ok())
        .flatten()
}

/// The id of the exchange a history ends with: a hash (FNV-1a, stable
/// across builds and restarts) of its last question and answer.
pub fn answer_id(question: &str, answer: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in question.bytes().chain([0]).chain(answer.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// A keyboard of one button.
pub fn single(label: &str, action: &Action) -> Option<Keyboard> {
    Some(vec![vec![Button {
        label: label.to_owned(),
        data: action.encode()?,
    }]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_encoded_decodes_and_fits() {
        let actions = [
            Action::Regenerate {
                answer: u64::MAX,
                asker: u64::MAX,
            },
            Action::Stop { asker: 0 },
            Action::Persona("pirate".into()),
            Action::Model(3),
            Action::BusinessMode(BusinessMode::Draft),
            Action::BusinessMode(BusinessMode::Auto),
            Action::BusinessMode(BusinessMode::Off),
            Action::Draft {
                op: DraftOp::Send,
                fan: u64::MAX,
                seq: u32::MAX,
            },
            Action::Draft {
                op: DraftOp::Skip,
                fan: 1,
                seq: 0,
            },
        ];
        for action in actions {
            let data = action.encode().expect("fits");
            assert!(data.len() <= MAX_DATA_BYTES, "{data}");
            assert_eq!(Action::decode(&data), Some(action));
        }
        assert_eq!(Action::Persona("x".repeat(62)).encode(), None);
    }

    #[test]
    fn anything_else_is_refused() {
        for data in [
            "",
            "r1",
            "r1:",
            "r1:zz:1",
            "r1:10",
            "r1:10:-1",
            "r1:10:01",
            "r2:10:1",
            "s1:",
            "s1:+1",
            "p1:",
            "p1:a\nb",
            "m1:x",
            "m1:-1",
            "x1:1",
            "bm1:",
            "bm1:Auto",
            "bm2:auto",
            "bd1:s:1",
            "bd1:x:1:1",
            "bd1:s:0:1",
            "bd1:s:1:1:1",
            "bd1:s:-1:1",
            "bd1:a:1:4294967296",
        ] {
            assert_eq!(Action::decode(data), None, "{data:?}");
        }
        assert_eq!(Action::decode(&format!("p1:{}", "a".repeat(70))), None);
    }

    #[test]
    fn answer_ids_tell_exchanges_apart() {
        assert_eq!(answer_id("q", "a"), answer_id("q", "a"));
        assert_ne!(answer_id("q", "a"), answer_id("q", "b"));
        assert_ne!(answer_id("qa", ""), answer_id("q", "a"));
    }
}
