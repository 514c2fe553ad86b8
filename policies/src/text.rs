//! A deliberately simple instruction encoder for the flow policy: hashed byte trigrams, averaged.
//!
//! The instruction is lower-cased and split on whitespace; each word is wrapped as `<word>` and every
//! byte trigram of it is hashed (FNV-1a, 64 bit) into one of `buckets` ids (fastText-style subword
//! hashing). The bag is normalised to sum 1, so multiplying it by a learned `[buckets, d]` table is the
//! average of the trigram embeddings. An empty instruction gives the zero vector.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(FNV_OFFSET, |h, b| (h ^ *b as u64).wrapping_mul(FNV_PRIME))
}

/// Hashed trigram ids of an instruction, in order (with repeats).
pub fn trigram_ids(instruction: &str, buckets: usize) -> Vec<usize> {
    let mut ids = Vec::new();
    for word in instruction.to_lowercase().split_whitespace() {
        let wrapped = format!("<{word}>");
        for tri in wrapped.as_bytes().windows(3) {
            ids.push((fnv1a(tri) % buckets as u64) as usize);
        }
    }
    ids
}

/// The normalised bag of hashed trigrams (length `buckets`, sums to 1 unless the text is empty).
pub fn bag_of_trigrams(instruction: &str, buckets: usize) -> Vec<f32> {
    let mut bag = vec![0f32; buckets];
    let ids = trigram_ids(instruction, buckets);
    let w = 1.0 / ids.len().max(1) as f32;
    for id in ids {
        bag[id] += w;
    }
    bag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bag_is_normalised_and_case_insensitive() {
        let a = bag_of_trigrams("Pick the Cube", 512);
        let b = bag_of_trigrams("pick  the cube", 512);
        assert_eq!(a, b);
        assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        // "<pick>" has 4 trigrams, "<the>" 3, "<cube>" 4.
        assert_eq!(trigram_ids("pick the cube", 512).len(), 11);
        assert!(bag_of_trigrams("", 16).iter().all(|v| *v == 0.0));
        assert_ne!(a, bag_of_trigrams("place the cube", 512));
    }
}
