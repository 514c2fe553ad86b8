//! The TOPReward prompt, built and tokenised exactly as the reference pipeline does.
//!
//! Reference: LeRobot's `TOPRewardEncoderProcessorStep._encode_batch` (the TOPReward authors'
//! `QwenClient.compute_instruction_reward` builds the same string):
//! - default (no chat template): the user turn `[video, prefix]` is rendered with the Qwen3-VL chat template
//!   and cut at the first `<|im_end|>`, then the formatted suffix is appended:
//!   `<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{prefix}{instruction} Decide whether the
//!   above statement is True or not. The answer is: True` (no space or newline around the video block);
//! - chat template: the user turn holds `prefix + suffix` without the final "True", then
//!   `<|im_end|>\n<|im_start|>assistant\n` and "True" (token "True", no leading space).
//!
//! `Qwen3VLProcessor.__call__` then replaces `<|vision_start|><|video_pad|><|vision_end|>` by, per temporal
//! group g, `<{t_g:.1f} seconds><|vision_start|>` + `<|video_pad|>` x (grid_h*grid_w/4) + `<|vision_end|>` and
//! the tokenizer (tokenizer.json, BPE) encodes the whole string at once.
//!
//! The score is `log_softmax(logits[score_position])[target_token_id]`: with the answer in the input (default)
//! the position is the second to last; without it the input stops before the answer and the position is the
//! last one.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::qwen3_vl::processor::VideoInputs;

/// `" True"` (leading space) in the Qwen3 / Qwen3-VL vocabulary: the token TOPReward scores.
pub const TRUE_TOKEN_ID: u32 = 3007;
/// `" False"` in the Qwen3 / Qwen3-VL vocabulary.
pub const FALSE_TOKEN_ID: u32 = 3557;
/// `<|im_start|>`.
pub const IM_START_TOKEN_ID: u32 = 151644;
/// `<|im_end|>`, the Qwen3-VL Instruct eos token.
pub const IM_END_TOKEN_ID: u32 = 151645;
/// `<|vision_start|>`.
pub const VISION_START_TOKEN_ID: u32 = 151652;
/// `<|vision_end|>`.
pub const VISION_END_TOKEN_ID: u32 = 151653;
/// `<|video_pad|>`: one per merged 2x2 patch window of a temporal group.
pub const VIDEO_PAD_TOKEN_ID: u32 = 151656;

const VISION_START: &str = "<|vision_start|>";
const VISION_END: &str = "<|vision_end|>";
const VIDEO_PAD: &str = "<|video_pad|>";
const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";
/// Strings the tokenizer would read as control tokens; refused inside user text.
const CONTROL_STRINGS: [&str; 9] = [
    VISION_START,
    VISION_END,
    VIDEO_PAD,
    IM_START,
    IM_END,
    "<|image_pad|>",
    "<|endoftext|>",
    "<|vision_pad|>",
    "<|placeholder|>",
];

/// The reference prompt prefix (LeRobot `DEFAULT_PROMPT_PREFIX`, TOPReward `prompt_text`).
pub const DEFAULT_PROMPT_PREFIX: &str =
    "The above video shows a robot manipulation trajectory that completes the following task: ";
/// The reference suffix (LeRobot `DEFAULT_PROMPT_SUFFIX_TEMPLATE`): no period after the instruction.
pub const DEFAULT_SUFFIX_TEMPLATE: &str =
    "{instruction} Decide whether the above statement is True or not. The answer is: True";
/// The answer the chat-template variant appends after the assistant header.
pub const CHAT_ANSWER: &str = "True";

/// How the prompt is written. Defaults reproduce the paper's (and LeRobot's) default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptConfig {
    /// Text right after the video (default [`DEFAULT_PROMPT_PREFIX`]).
    pub prefix: String,
    /// Text after the prefix; `{instruction}` is replaced by the task, and it ends with the answer word
    /// (default [`DEFAULT_SUFFIX_TEMPLATE`]).
    pub suffix_template: String,
    /// Wrap in the chat template (the paper reports lower VOC with it on Qwen3-VL-8B). Default false.
    pub chat_template: bool,
    /// Keep the answer token in the input and read the logits before it (default true, as the reference);
    /// false ends the input before the answer and reads the last position (same ids minus the last).
    pub answer_in_input: bool,
}

impl PromptConfig {
    /// The paper's prompt with the given variant and, where given, another prefix or suffix template.
    pub fn paper_with(chat_template: bool, prefix: Option<&str>, suffix_template: Option<&str>) -> Self {
        let paper = Self::default();
        Self {
            prefix: prefix.map_or(paper.prefix, str::to_string),
            suffix_template: suffix_template.map_or(paper.suffix_template, str::to_string),
            chat_template,
            ..paper
        }
    }

    /// Check the texts without a tokenizer: no control tokens, and a suffix that places the instruction.
    pub fn validate(&self) -> Result<(), PromptError> {
        for (field, text) in [
            ("prefix", &self.prefix),
            ("suffix_template", &self.suffix_template),
        ] {
            check_control(field, text)?;
        }
        if !self.suffix_template.contains("{instruction}") {
            return Err(PromptError::NoInstruction(self.suffix_template.clone()));
        }
        Ok(())
    }
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PROMPT_PREFIX.to_string(),
            suffix_template: DEFAULT_SUFFIX_TEMPLATE.to_string(),
            chat_template: false,
            answer_in_input: true,
        }
    }
}

/// What can go wrong building a prompt.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot load tokenizer {path}: {reason}")]
    LoadTokenizer { path: PathBuf, reason: String },
    #[error("tokenizer failed on the prompt: {0}")]
    Encode(String),
    #[error("{field} contains the control token {token}; remove it")]
    ControlToken {
        field: &'static str,
        token: &'static str,
    },
    #[error("the prompt's answer {answer:?} is not a single token (it must be one token to be scored)")]
    AnswerNotOneToken { answer: String },
    #[error("the suffix template must end with an answer word (e.g. \"True\"), got {0:?}")]
    NoAnswer(String),
    #[error("the suffix template must contain {{instruction}} where the task text goes, got {0:?}")]
    NoInstruction(String),
    #[error("the chat-template variant needs a suffix ending in \"True\", got {0:?}")]
    ChatSuffix(String),
    #[error("a video needs at least one temporal group")]
    NoGroups,
    #[error("temporal group {group}: its text does not start or end on a token boundary")]
    TokenBoundary { group: usize },
    #[error("temporal group {group}: expected {expected} video tokens, found {found}")]
    GroupTokens {
        group: usize,
        expected: usize,
        found: usize,
    },
}

/// Tokens of one temporal group: `<t seconds>` text, `<|vision_start|>`, the pads, `<|vision_end|>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTokens {
    /// The whole group, timestamp text included.
    pub tokens: Range<usize>,
    /// Its `<|video_pad|>` run (where the vision features go).
    pub video_pads: Range<usize>,
}

/// Which part of the prompt a [`Segment`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// Text before the first group (`<|im_start|>user\n`).
    Prefix,
    /// Temporal group `g`.
    Group(usize),
    /// Text after the last group (instruction, question, answer).
    Suffix,
}

/// A contiguous run of `input_ids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub kind: SegmentKind,
    pub tokens: Range<usize>,
}

/// A tokenised TOPReward prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRewardPrompt {
    /// Token ids, as `Qwen3VLProcessor` returns them.
    pub input_ids: Vec<u32>,
    /// The processor-expanded text that was tokenised.
    pub text: String,
    /// One entry per temporal group, in order.
    pub groups: Vec<GroupTokens>,
    /// The scored token (default `TRUE_TOKEN_ID`, " True").
    pub target_token_id: u32,
    /// Position whose logits predict `target_token_id`.
    pub score_position: usize,
}

impl TopRewardPrompt {
    /// `[prefix text][group 0]...[group n-1][suffix text]`: ranges covering `input_ids` in order. A group's
    /// tokens depend only on its own timestamp and size, so the first k+1 segments of a clip are the same for
    /// every longer clip at the same resolution and timestamps (a KV cache over them can be reused).
    pub fn segments(&self) -> Vec<Segment> {
        let mut out = Vec::with_capacity(self.groups.len() + 2);
        let first = self
            .groups
            .first()
            .map_or(self.input_ids.len(), |g| g.tokens.start);
        out.push(Segment {
            kind: SegmentKind::Prefix,
            tokens: 0..first,
        });
        for (g, group) in self.groups.iter().enumerate() {
            out.push(Segment {
                kind: SegmentKind::Group(g),
                tokens: group.tokens.clone(),
            });
        }
        let last = self.groups.last().map_or(first, |g| g.tokens.end);
        out.push(Segment {
            kind: SegmentKind::Suffix,
            tokens: last..self.input_ids.len(),
        });
        out
    }
}

/// Builds TOPReward prompts with the Qwen3 tokenizer.
#[derive(Debug, Clone)]
pub struct PromptBuilder {
    tokenizer: Tokenizer,
    config: PromptConfig,
}

impl PromptBuilder {
    /// Load `tokenizer.json` (the checkpoint's, or [`crate::assets::qwen3_tokenizer_json`]).
    pub fn from_tokenizer_file(path: &Path, config: PromptConfig) -> Result<Self, PromptError> {
        let tokenizer = Tokenizer::from_file(path).map_err(|e| PromptError::LoadTokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::new(tokenizer, config)
    }

    /// Use an already loaded tokenizer.
    pub fn new(tokenizer: Tokenizer, config: PromptConfig) -> Result<Self, PromptError> {
        config.validate()?;
        Ok(Self { tokenizer, config })
    }

    /// The configuration in use.
    pub fn config(&self) -> &PromptConfig {
        &self.config
    }

    /// The tokenizer in use.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The prompt text before the processor expands the video, as the reference passes it to the processor
    /// (without the answer when `answer_in_input` is false).
    pub fn prompt_text(&self, instruction: &str) -> Result<String, PromptError> {
        let mut text = self.full_prompt_text(instruction)?;
        if !self.config.answer_in_input {
            text.truncate(text.len() - answer_len(&text, self.config.chat_template)?);
        }
        Ok(text)
    }

    /// The prompt text ending with the answer.
    fn full_prompt_text(&self, instruction: &str) -> Result<String, PromptError> {
        check_control("instruction", instruction)?;
        let c = &self.config;
        let suffix = c.suffix_template.replace("{instruction}", instruction);
        let video = format!("{VISION_START}{VIDEO_PAD}{VISION_END}");
        if c.chat_template {
            // LeRobot: `instruction_suffix.removesuffix("True").rstrip()` inside the user turn, then the
            // generation prompt, then "True".
            let question = suffix
                .strip_suffix(CHAT_ANSWER)
                .ok_or_else(|| PromptError::ChatSuffix(suffix.clone()))?;
            Ok(format!(
                "{IM_START}user\n{video}{}{}{IM_END}\n{IM_START}assistant\n{CHAT_ANSWER}",
                c.prefix,
                question.trim_end()
            ))
        } else {
            // the rendered user turn cut at the first eos (`prompt_chat.split(eos_token)[0]`)
            Ok(format!("{IM_START}user\n{video}{}{suffix}", c.prefix))
        }
    }

    /// The prompt for a preprocessed video.
    pub fn build(&self, instruction: &str, video: &VideoInputs) -> Result<TopRewardPrompt, PromptError> {
        self.build_for(instruction, &video.timestamps, video.tokens_per_group())
    }

    /// The prompt for a video of `timestamps.len()` temporal groups of `tokens_per_group` tokens each.
    pub fn build_for(
        &self,
        instruction: &str,
        timestamps: &[f64],
        tokens_per_group: usize,
    ) -> Result<TopRewardPrompt, PromptError> {
        if timestamps.is_empty() {
            return Err(PromptError::NoGroups);
        }
        let text = self.full_prompt_text(instruction)?;
        // Qwen3VLProcessor: replace the first vision triple by the per-group placeholder
        let triple = format!("{VISION_START}{VIDEO_PAD}{VISION_END}");
        let at = text.find(&triple).ok_or(PromptError::NoGroups)?;
        let mut expanded =
            String::with_capacity(text.len() + timestamps.len() * (tokens_per_group * 13 + 48));
        expanded.push_str(&text[..at]);
        let mut group_bytes = Vec::with_capacity(timestamps.len());
        for t in timestamps {
            let start = expanded.len();
            expanded.push_str(&format!("<{t:.1} seconds>{VISION_START}"));
            for _ in 0..tokens_per_group {
                expanded.push_str(VIDEO_PAD);
            }
            expanded.push_str(VISION_END);
            group_bytes.push(start..expanded.len());
        }
        let answer_from = text.len() - answer_len(&text, self.config.chat_template)?;
        let answer_from = answer_from - at - triple.len() + expanded.len();
        expanded.push_str(&text[at + triple.len()..]);

        let encoding = self
            .tokenizer
            .encode(expanded.as_str(), true)
            .map_err(|e| PromptError::Encode(e.to_string()))?;
        let mut input_ids = encoding.get_ids().to_vec();
        let offsets = encoding.get_offsets();

        // the answer must be exactly the last token
        let n = input_ids.len();
        if n < 2 || offsets[n - 1].0 != answer_from || offsets[n - 1].1 != expanded.len() {
            return Err(PromptError::AnswerNotOneToken {
                answer: expanded[answer_from..].to_string(),
            });
        }

        let mut groups = Vec::with_capacity(group_bytes.len());
        let mut cursor = 0;
        for (g, bytes) in group_bytes.iter().enumerate() {
            let start = (cursor..n).find(|&i| offsets[i].0 == bytes.start && offsets[i].1 > offsets[i].0);
            let end = start.and_then(|s| (s..n).find(|&i| offsets[i].1 == bytes.end).map(|i| i + 1));
            let (Some(start), Some(end)) = (start, end) else {
                return Err(PromptError::TokenBoundary { group: g });
            };
            let vs = (start..end).find(|&i| input_ids[i] == VISION_START_TOKEN_ID);
            let pads = vs.map_or(0, |vs| {
                input_ids[vs + 1..end]
                    .iter()
                    .take_while(|&&id| id == VIDEO_PAD_TOKEN_ID)
                    .count()
            });
            let ok =
                vs.is_some_and(|vs| vs + 1 + pads + 1 == end && input_ids[end - 1] == VISION_END_TOKEN_ID);
            if !ok || pads != tokens_per_group {
                return Err(PromptError::GroupTokens {
                    group: g,
                    expected: tokens_per_group,
                    found: pads,
                });
            }
            let vs = vs.unwrap_or(start);
            groups.push(GroupTokens {
                tokens: start..end,
                video_pads: vs + 1..vs + 1 + pads,
            });
            cursor = end;
        }

        let target_token_id = input_ids[n - 1];
        let (score_position, text) = if self.config.answer_in_input {
            (n - 2, expanded)
        } else {
            input_ids.pop();
            expanded.truncate(answer_from);
            (n - 2, expanded)
        };
        Ok(TopRewardPrompt {
            input_ids,
            text,
            groups,
            target_token_id,
            score_position,
        })
    }
}

/// Bytes of the answer at the end of the prompt text: `True` after the chat header, or the last word of the
/// suffix with the space before it (" True", token 3007).
fn answer_len(text: &str, chat: bool) -> Result<usize, PromptError> {
    if chat {
        return Ok(CHAT_ANSWER.len());
    }
    let word = text.rsplit(char::is_whitespace).next().unwrap_or("");
    if word.is_empty() || word.contains('>') {
        return Err(PromptError::NoAnswer(
            text.chars()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect(),
        ));
    }
    let before = &text[..text.len() - word.len()];
    Ok(word.len() + if before.ends_with(' ') { 1 } else { 0 })
}

fn check_control(field: &'static str, text: &str) -> Result<(), PromptError> {
    match CONTROL_STRINGS.iter().find(|t| text.contains(*t)) {
        Some(token) => Err(PromptError::ControlToken { field, token }),
        None => Ok(()),
    }
}
