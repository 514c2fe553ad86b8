//! Feetech protocol 0 (SCS/STS series) framing, as the STS3215 servos of the SO-101 speak it and as
//! LeRobot's `FeetechMotorsBus` (through `scservo_sdk`) sends it.
//!
//! Instruction packet: `FF FF id len instr p1..pn chk` with `len = n + 2` and
//! `chk = !(id + len + instr + sum p) & 0xFF`. Status packet: `FF FF id len err d1..dn chk`.
//! Multi-byte registers are little-endian.

/// Broadcast id (sync read / sync write address every listed motor through it).
pub const BROADCAST_ID: u8 = 0xFE;
/// Largest id a motor can have; ids above it are not valid in a status packet.
pub const MAX_ID: u8 = 0xFD;

/// Instruction codes used by LeRobot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Instruction {
    Ping = 0x01,
    Read = 0x02,
    Write = 0x03,
    SyncRead = 0x82,
    SyncWrite = 0x83,
}

impl Instruction {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x01 => Instruction::Ping,
            0x02 => Instruction::Read,
            0x03 => Instruction::Write,
            0x82 => Instruction::SyncRead,
            0x83 => Instruction::SyncWrite,
            _ => return None,
        })
    }
}

/// Model number STS3215 servos report at address 3 (LeRobot's `MODEL_NUMBER_TABLE["sts3215"]`).
pub const STS3215_MODEL_NUMBER: u16 = 777;
/// Encoder resolution (ticks per turn); positions are 0..=4095.
pub const RESOLUTION: i32 = 4096;
/// Largest position value, LeRobot's `max_res` (4095) used in the degree conversion.
pub const MAX_POSITION: i32 = RESOLUTION - 1;

/// A register of the STS3215 control table (LeRobot's `STS_SMS_SERIES_CONTROL_TABLE`): address and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register {
    pub name: &'static str,
    pub address: u8,
    pub size: u8,
    /// Bit index of the sign in sign-magnitude encoding (LeRobot's `STS_SMS_SERIES_ENCODINGS_TABLE`).
    pub sign_bit: Option<u8>,
}

macro_rules! registers {
    ($($ident:ident = ($name:literal, $addr:expr, $size:expr, $sign:expr);)*) => {
        $(pub const $ident: Register = Register { name: $name, address: $addr, size: $size, sign_bit: $sign };)*
        /// Every register toprl reads or writes.
        pub const ALL: &[Register] = &[$($ident),*];
    };
}

/// The registers toprl and LeRobot's SO-101 drivers use.
pub mod reg {
    use super::Register;
    registers! {
        FIRMWARE_MAJOR_VERSION = ("Firmware_Major_Version", 0, 1, None);
        FIRMWARE_MINOR_VERSION = ("Firmware_Minor_Version", 1, 1, None);
        MODEL_NUMBER = ("Model_Number", 3, 2, None);
        ID = ("ID", 5, 1, None);
        BAUD_RATE = ("Baud_Rate", 6, 1, None);
        RETURN_DELAY_TIME = ("Return_Delay_Time", 7, 1, None);
        MIN_POSITION_LIMIT = ("Min_Position_Limit", 9, 2, None);
        MAX_POSITION_LIMIT = ("Max_Position_Limit", 11, 2, None);
        MAX_TORQUE_LIMIT = ("Max_Torque_Limit", 16, 2, None);
        PHASE = ("Phase", 18, 1, None);
        P_COEFFICIENT = ("P_Coefficient", 21, 1, None);
        D_COEFFICIENT = ("D_Coefficient", 22, 1, None);
        I_COEFFICIENT = ("I_Coefficient", 23, 1, None);
        PROTECTION_CURRENT = ("Protection_Current", 28, 2, None);
        HOMING_OFFSET = ("Homing_Offset", 31, 2, Some(11));
        OPERATING_MODE = ("Operating_Mode", 33, 1, None);
        OVERLOAD_TORQUE = ("Overload_Torque", 36, 1, None);
        TORQUE_ENABLE = ("Torque_Enable", 40, 1, None);
        ACCELERATION = ("Acceleration", 41, 1, None);
        GOAL_POSITION = ("Goal_Position", 42, 2, Some(15));
        GOAL_VELOCITY = ("Goal_Velocity", 46, 2, Some(15));
        LOCK = ("Lock", 55, 1, None);
        PRESENT_POSITION = ("Present_Position", 56, 2, Some(15));
        PRESENT_VELOCITY = ("Present_Velocity", 58, 2, Some(15));
        PRESENT_LOAD = ("Present_Load", 60, 2, Some(10));
        MAXIMUM_ACCELERATION = ("Maximum_Acceleration", 85, 1, None);
    }
}

/// Addresses below this one are EPROM (kept across power cycles when unlocked); from 40 on, SRAM.
pub const FIRST_SRAM_ADDRESS: u8 = 40;

/// Status error bits (the servo's error byte).
pub const ERROR_BITS: [(u8, &str); 5] = [
    (0x01, "input voltage"),
    (0x02, "angle limit"),
    (0x04, "overheat"),
    (0x08, "overcurrent"),
    (0x20, "overload"),
];

/// Describes a status error byte, e.g. `overheat, overload`.
pub fn describe_error(err: u8) -> String {
    let mut parts: Vec<String> = ERROR_BITS
        .iter()
        .filter(|(bit, _)| err & bit != 0)
        .map(|(_, name)| (*name).to_string())
        .collect();
    let known: u8 = ERROR_BITS.iter().map(|(b, _)| b).sum();
    if err & !known != 0 {
        parts.push(format!("unknown bits 0x{:02X}", err & !known));
    }
    parts.join(", ")
}

/// `!(sum of bytes) & 0xFF` over id, length, instruction/error and parameters.
pub fn checksum(body: &[u8]) -> u8 {
    !body.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// Builds an instruction packet (also a status packet when `instr_or_err` is the error byte).
pub fn packet(id: u8, instr_or_err: u8, params: &[u8]) -> Vec<u8> {
    let len = (params.len() + 2) as u8;
    let mut out = Vec::with_capacity(params.len() + 6);
    out.extend_from_slice(&[0xFF, 0xFF, id, len, instr_or_err]);
    out.extend_from_slice(params);
    let chk = checksum(&out[2..]);
    out.push(chk);
    out
}

pub fn ping_packet(id: u8) -> Vec<u8> {
    packet(id, Instruction::Ping as u8, &[])
}

pub fn read_packet(id: u8, address: u8, size: u8) -> Vec<u8> {
    packet(id, Instruction::Read as u8, &[address, size])
}

pub fn write_packet(id: u8, address: u8, data: &[u8]) -> Vec<u8> {
    let mut params = Vec::with_capacity(data.len() + 1);
    params.push(address);
    params.extend_from_slice(data);
    packet(id, Instruction::Write as u8, &params)
}

pub fn sync_read_packet(address: u8, size: u8, ids: &[u8]) -> Vec<u8> {
    let mut params = vec![address, size];
    params.extend_from_slice(ids);
    packet(BROADCAST_ID, Instruction::SyncRead as u8, &params)
}

/// `data` holds `(id, bytes)`; every `bytes` must have length `size`.
pub fn sync_write_packet(address: u8, size: u8, data: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut params = vec![address, size];
    for (id, bytes) in data {
        debug_assert_eq!(bytes.len(), size as usize);
        params.push(*id);
        params.extend_from_slice(bytes);
    }
    packet(BROADCAST_ID, Instruction::SyncWrite as u8, &params)
}

/// A parsed packet: instruction packets carry the instruction code in `code`, status packets the
/// error byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: u8,
    pub code: u8,
    pub params: Vec<u8>,
}

/// What [`parse_frame`] found at the start of a byte buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet for a whole packet.
    Incomplete,
    /// A packet whose checksum is right; `consumed` bytes (garbage before it included) are used up.
    Frame { frame: Frame, consumed: usize },
    /// Bytes that are not a packet start (garbage, impossible header); drop `consumed` bytes and retry.
    Skip { consumed: usize, reason: String },
    /// A whole packet whose checksum is wrong (`consumed` bytes long).
    BadChecksum { consumed: usize, reason: String },
}

/// Finds the first packet in `buf`, skipping bytes before an `FF FF` header as the Feetech SDK does.
pub fn parse_frame(buf: &[u8]) -> Parsed {
    let Some(start) = buf.windows(2).position(|w| w == [0xFF, 0xFF]) else {
        // Keep a trailing 0xFF: it may be the first half of a header.
        return if buf.len() > 1 || buf.first().is_some_and(|b| *b != 0xFF) {
            Parsed::Skip {
                consumed: buf.len() - usize::from(buf.last() == Some(&0xFF)),
                reason: "no FF FF header".into(),
            }
        } else {
            Parsed::Incomplete
        };
    };
    if start > 0 {
        return Parsed::Skip {
            consumed: start,
            reason: format!("{start} bytes before the FF FF header"),
        };
    }
    if buf.len() < 4 {
        return Parsed::Incomplete;
    }
    let (id, len) = (buf[2], buf[3] as usize);
    if id == 0xFF || len < 2 {
        // Matches the SDK: drop one byte and resynchronise.
        return Parsed::Skip {
            consumed: 1,
            reason: format!("impossible header id {id:#04x} length {len}"),
        };
    }
    let total = len + 4;
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    let expected = checksum(&buf[2..total - 1]);
    if buf[total - 1] != expected {
        return Parsed::BadChecksum {
            consumed: total,
            reason: format!(
                "checksum {:#04x}, expected {:#04x} in packet {:02X?}",
                buf[total - 1],
                expected,
                &buf[..total]
            ),
        };
    }
    Parsed::Frame {
        frame: Frame {
            id,
            code: buf[4],
            params: buf[5..total - 1].to_vec(),
        },
        consumed: total,
    }
}

/// Sign-magnitude encoding `(negative << bit) | |value|` (LeRobot's `encode_sign_magnitude`); errors
/// when the magnitude does not fit below the sign bit.
pub fn encode_sign_magnitude(value: i32, sign_bit: u8) -> Result<u32, String> {
    let max = (1u32 << sign_bit) - 1;
    let magnitude = value.unsigned_abs();
    if magnitude > max {
        return Err(format!(
            "magnitude {magnitude} exceeds {max} (max for sign bit {sign_bit})"
        ));
    }
    Ok((u32::from(value < 0) << sign_bit) | magnitude)
}

/// Inverse of [`encode_sign_magnitude`] (LeRobot's `decode_sign_magnitude`): bits above the sign bit
/// are ignored.
pub fn decode_sign_magnitude(encoded: u32, sign_bit: u8) -> i32 {
    let magnitude = (encoded & ((1u32 << sign_bit) - 1)) as i32;
    if (encoded >> sign_bit) & 1 == 1 {
        -magnitude
    } else {
        magnitude
    }
}

/// Register value (already sign-encoded, non-negative) to little-endian bytes of `size` (1, 2 or 4).
pub fn to_bytes(value: u32, size: u8) -> Vec<u8> {
    value.to_le_bytes()[..size as usize].to_vec()
}

/// Little-endian bytes to a register value.
pub fn from_bytes(bytes: &[u8]) -> u32 {
    bytes.iter().rev().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
}

/// Encodes a signed value for `register` (sign-magnitude where the register uses it) and checks it fits.
pub fn encode_value(register: &Register, value: i32) -> Result<u32, String> {
    let raw = match register.sign_bit {
        Some(bit) => encode_sign_magnitude(value, bit)?,
        None => u32::try_from(value).map_err(|_| format!("negative value {value} for unsigned register"))?,
    };
    let max = if register.size >= 4 {
        u32::MAX
    } else {
        (1u32 << (8 * register.size)) - 1
    };
    if raw > max {
        return Err(format!("{value} does not fit in {} bytes", register.size));
    }
    Ok(raw)
}

/// Decodes a register value read from the bus.
pub fn decode_value(register: &Register, raw: u32) -> i32 {
    match register.sign_bit {
        Some(bit) => decode_sign_magnitude(raw, bit),
        None => raw as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden packets from so101-hardware.md (captured from LeRobot's scservo_sdk calls).
    #[test]
    fn golden_packets() {
        assert_eq!(
            read_packet(1, 56, 2),
            [0xFF, 0xFF, 0x01, 0x04, 0x02, 0x38, 0x02, 0xBE]
        );
        assert_eq!(
            sync_read_packet(56, 2, &[1, 2, 3, 4, 5, 6]),
            [0xFF, 0xFF, 0xFE, 0x0A, 0x82, 0x38, 0x02, 1, 2, 3, 4, 5, 6, 0x26]
        );
        assert_eq!(ping_packet(1), [0xFF, 0xFF, 0x01, 0x02, 0x01, 0xFB]);
        assert_eq!(packet(1, 0, &[]), [0xFF, 0xFF, 0x01, 0x02, 0x00, 0xFC]);
    }

    #[test]
    fn write_and_sync_write_layout() {
        // Goal_Position 2048 on id 3: FF FF 03 05 03 2A 00 08 chk.
        let p = write_packet(3, 42, &to_bytes(2048, 2));
        assert_eq!(&p[..8], &[0xFF, 0xFF, 3, 5, 3, 42, 0x00, 0x08]);
        assert_eq!(p[8], !(3u8 + 5 + 3 + 42 + 8));
        let s = sync_write_packet(42, 2, &[(1, vec![0, 8]), (2, vec![1, 2])]);
        assert_eq!(&s[..5], &[0xFF, 0xFF, 0xFE, 2 + 2 + 6, 0x83]);
        assert_eq!(&s[5..13], &[42, 2, 1, 0, 8, 2, 1, 2]);
    }

    #[test]
    fn parses_status_packets_and_resynchronises() {
        let reply = packet(1, 0, &[0x00, 0x08]);
        assert_eq!(
            parse_frame(&reply),
            Parsed::Frame {
                frame: Frame {
                    id: 1,
                    code: 0,
                    params: vec![0, 8]
                },
                consumed: 8
            }
        );
        assert_eq!(parse_frame(&reply[..5]), Parsed::Incomplete);
        let mut noisy = vec![0x12, 0x34];
        noisy.extend_from_slice(&reply);
        assert!(matches!(parse_frame(&noisy), Parsed::Skip { consumed: 2, .. }));
        let mut bad = reply.clone();
        bad[7] ^= 0x55;
        assert!(matches!(
            parse_frame(&bad),
            Parsed::BadChecksum { consumed: 8, .. }
        ));
        assert_eq!(parse_frame(&[0xFF]), Parsed::Incomplete);
        assert!(matches!(
            parse_frame(&[0x00, 0xFF]),
            Parsed::Skip { consumed: 1, .. }
        ));
    }

    #[test]
    fn sign_magnitude_matches_lerobot() {
        // encode_sign_magnitude(-1396, 11) == 2048 + 1396 in LeRobot.
        assert_eq!(encode_sign_magnitude(-1396, 11), Ok(3444));
        assert_eq!(encode_sign_magnitude(1396, 11), Ok(1396));
        assert_eq!(encode_sign_magnitude(0, 15), Ok(0));
        assert_eq!(encode_sign_magnitude(-2047, 11), Ok(4095));
        assert!(encode_sign_magnitude(2048, 11).is_err());
        assert!(encode_sign_magnitude(-32768, 15).is_err());
        for v in [-32767, -4095, -1, 0, 1, 2047, 4095, 32767] {
            assert_eq!(
                decode_sign_magnitude(encode_sign_magnitude(v, 15).unwrap(), 15),
                v
            );
        }
        // "Negative zero" decodes to 0.
        assert_eq!(decode_sign_magnitude(1 << 11, 11), 0);
        assert_eq!(encode_value(&reg::HOMING_OFFSET, -5), Ok(2053));
        assert!(encode_value(&reg::TORQUE_ENABLE, 256).is_err());
        assert!(encode_value(&reg::LOCK, -1).is_err());
        assert_eq!(decode_value(&reg::HOMING_OFFSET, 2053), -5);
        assert_eq!(from_bytes(&to_bytes(0xBEEF, 2)), 0xBEEF);
    }

    #[test]
    fn describes_error_bits() {
        assert_eq!(describe_error(0x24), "overheat, overload");
        assert_eq!(describe_error(0x40), "unknown bits 0x40");
    }
}
