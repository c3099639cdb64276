//! RSA signature verification (RSASSA-PKCS1-v1_5 and RSASSA-PSS, RFC 8017) for JWS
//! RS256/384/512 and PS256/384/512, written for the filter's Wasm build.
//!
//! Why not the `rsa` crate (through jwt-simple): its `num-bigint-dig` `modpow` is a generic,
//! windowed exponentiation on 64-bit limbs, and Wasm has no 64×64→128 multiply, so one
//! RS256-2048 check costs ≈ 2 ms in V8. Public exponents are tiny (65537 = 2^16 + 1 nearly
//! always), so verification is 16 Montgomery squarings and one multiplication; on 32-bit
//! limbs each limb product is one native `i64.mul` in Wasm. `crypto-bigint`'s
//! `BoxedMontyForm` doing exactly those 17 operations was measured 3.6× slower than this
//! code in Wasm (node's V8, 2048-bit: ≈ 500 µs against ≈ 139 µs), hence the hand-written
//! limb arithmetic below, proven against the `rsa` crate and jwt-simple in
//! `core/tests/rsa_verify_parity.rs`. A whole RS256-2048 verification measured ≈ 130 µs in
//! node's V8 against ≈ 2,000–3,300 µs for the `rsa` crate in the same run (15–30×; a shared,
//! loaded machine: ratios from interleaved rounds).
//!
//! Everything here is public data (key, message, signature), so the code is variable-time on
//! purpose. It never panics: slices are walked with iterators or checked access, and any
//! inconsistency is a failed verification (fail closed).
//!
//! What is accepted matches the `rsa` crate as jwt-simple drives it (`rsa::pkcs1v15` and
//! `rsa::pss` verifying keys, salt length = hash length), with one deliberate difference:
//! for a modulus whose bit length is 1 more than a multiple of 8, PSS requires the
//! signature's leading byte to be zero as RFC 8017 §8.1.2 step 2c says (`rsa` skips that
//! byte). Only the private key's holder can produce such a signature.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// Largest modulus accepted, in bits (the `rsa` crate's default limit; jwt-simple's too).
pub const MAX_MODULUS_BITS: usize = 4096;
/// Smallest public exponent accepted (the `rsa` crate's: 2, and it must be odd).
const MIN_EXPONENT: u64 = 3;
/// Largest public exponent accepted (the `rsa` crate's: 2^33 − 1). It also bounds the work
/// of one verification to 33 squarings and 33 multiplications.
const MAX_EXPONENT: u64 = (1 << 33) - 1;

/// The hash of a JWS RSA algorithm (RS256/PS256 → SHA-256, and so on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaHash {
    /// SHA-256 (RS256, PS256).
    Sha256,
    /// SHA-384 (RS384, PS384).
    Sha384,
    /// SHA-512 (RS512, PS512).
    Sha512,
}

// === impl RsaHash ===

impl RsaHash {
    /// Digest length in bytes.
    fn len(self) -> usize {
        match self {
            RsaHash::Sha256 => 32,
            RsaHash::Sha384 => 48,
            RsaHash::Sha512 => 64,
        }
    }

    /// The hash of the concatenation of `parts`.
    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut hasher = D::new();
            for part in parts {
                hasher.update(part);
            }
            hasher.finalize().to_vec()
        }
        match self {
            RsaHash::Sha256 => run::<Sha256>(parts),
            RsaHash::Sha384 => run::<Sha384>(parts),
            RsaHash::Sha512 => run::<Sha512>(parts),
        }
    }

    /// DER of the DigestInfo that precedes the hash in an EMSA-PKCS1-v1_5 encoding
    /// (RFC 8017 §9.2 note 1: AlgorithmIdentifier with NULL parameters, then the OCTET
    /// STRING header). The form without NULL parameters is refused, as by `rsa`.
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            RsaHash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            RsaHash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            RsaHash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// An RSA public key prepared for verification: the modulus as 32-bit limbs and its
/// Montgomery constants, computed once per key (per JWK), not per token.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaKey {
    /// The modulus n, little-endian 32-bit limbs, the top limb non-zero.
    modulus: Vec<u32>,
    /// Bit length of n.
    modulus_bits: usize,
    /// Byte length of n: the length every signature must have (k in RFC 8017).
    modulus_len: usize,
    /// −n⁻¹ mod 2^32, the per-limb Montgomery reduction factor.
    neg_inv: u32,
    /// R² mod n with R = 2^(32·limbs): multiplying by it (Montgomery) enters Montgomery form.
    r_squared: Vec<u32>,
    /// The public exponent e (odd, 3 ≤ e < 2^33).
    exponent: u64,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaKey")
            .field("modulus_bits", &self.modulus_bits)
            .field("exponent", &self.exponent)
            .finish_non_exhaustive()
    }
}

// === impl RsaKey ===

impl RsaKey {
    /// Prepares a key from its big-endian modulus `n` and exponent `e` (leading zero bytes
    /// allowed). `None` for what the `rsa` crate also refuses: an even modulus or one above
    /// [`MAX_MODULUS_BITS`], an even exponent, one below 3 or above 2^33 − 1, or e ≥ n.
    /// The minimum key size is the caller's policy (2048 bits in claimgate).
    pub fn new(n: &[u8], e: &[u8]) -> Option<RsaKey> {
        let modulus = limbs_from_be(n)?;
        let low = *modulus.first()?;
        let top = *modulus.last()?;
        // INVARIANT: `limbs_from_be` drops leading zero bytes, so the top limb is non-zero.
        let modulus_bits = 32 * modulus.len() - top.leading_zeros() as usize;
        if low & 1 == 0 || modulus_bits > MAX_MODULUS_BITS {
            return None;
        }
        let exponent = exponent_from_be(e)?;
        if exponent & 1 == 0 || !(MIN_EXPONENT..=MAX_EXPONENT).contains(&exponent) {
            return None;
        }
        // e < n: a 35-bit modulus is the smallest that can exceed every accepted exponent.
        if modulus_bits <= 34 {
            let n_value = modulus
                .iter()
                .rev()
                .fold(0u64, |acc, &limb| (acc << 32) | u64::from(limb));
            if n_value <= exponent {
                return None;
            }
        }
        let mut key = RsaKey {
            neg_inv: neg_inv_mod_word(low),
            modulus_len: modulus_bits.div_ceil(8),
            modulus_bits,
            r_squared: Vec::new(),
            exponent,
            modulus,
        };
        key.r_squared = key.compute_r_squared()?;
        Some(key)
    }

    /// Bit length of the modulus.
    pub fn modulus_bits(&self) -> usize {
        self.modulus_bits
    }

    /// RSASSA-PKCS1-v1_5 verification (RFC 8017 §8.2.2) of `signature` over `message` (the
    /// JWS signing input, hashed here): the expected encoding
    /// `00 01 FF…FF 00 DigestInfo(hash(message))` is built and compared whole, so nothing of
    /// the decrypted block is parsed.
    pub fn verify_pkcs1v15(&self, hash: RsaHash, message: &[u8], signature: &[u8]) -> bool {
        let Some(encoded) = self.public_operation(signature) else {
            return false;
        };
        let prefix = hash.digest_info_prefix();
        let digest = hash.digest(&[message]);
        let k = self.modulus_len;
        // RFC 8017 §9.2 step 5: at least 8 bytes of 0xFF padding (k ≥ tLen + 11).
        let Some(padding) = k.checked_sub(prefix.len() + digest.len() + 3) else {
            return false;
        };
        if padding < 8 {
            return false;
        }
        let expected = [0x00u8, 0x01]
            .into_iter()
            .chain(std::iter::repeat_n(0xFF, padding))
            .chain(std::iter::once(0x00))
            .chain(prefix.iter().copied())
            .chain(digest.iter().copied());
        encoded.len() == k && encoded.iter().copied().eq(expected)
    }

    /// RSASSA-PSS verification (RFC 8017 §8.1.2, EMSA-PSS-VERIFY §9.1.2) of `signature` over
    /// `message` with MGF1 of the same hash and a salt exactly as long as the hash, as JWS
    /// (RFC 7518 §3.5) and jwt-simple require.
    pub fn verify_pss(&self, hash: RsaHash, message: &[u8], signature: &[u8]) -> bool {
        let Some(decrypted) = self.public_operation(signature) else {
            return false;
        };
        let em_bits = self.modulus_bits - 1;
        let em_len = em_bits.div_ceil(8);
        // RFC 8017 §8.1.2 step 2c: EM = I2OSP(m, emLen), which fails when the k-byte block
        // has a non-zero byte in front of the emLen bytes.
        let Some((front, encoded)) = decrypted.split_at_checked(decrypted.len() - em_len) else {
            return false;
        };
        if front.iter().any(|&b| b != 0) {
            return false;
        }
        let h_len = hash.len();
        let salt_len = h_len;
        if em_len < h_len + salt_len + 2 {
            return false;
        }
        // Step 4: the trailer byte.
        let Some((&trailer, body)) = encoded.split_last() else {
            return false;
        };
        if trailer != 0xBC {
            return false;
        }
        // Step 5: maskedDB || H.
        let Some((masked_db, h)) = body.split_at_checked(em_len - h_len - 1) else {
            return false;
        };
        // Step 6: the bits above emBits must be zero.
        let unused_bits = 8 * em_len - em_bits;
        let top_mask: u8 = 0xFF >> unused_bits;
        match masked_db.first() {
            Some(&first) if first & !top_mask == 0 => {}
            _ => return false,
        }
        // Steps 7–9: DB = maskedDB ⊕ MGF1(H), its unused top bits cleared.
        let mut db = masked_db.to_vec();
        mgf1_xor(hash, h, &mut db);
        if let Some(first) = db.first_mut() {
            *first &= top_mask;
        }
        // Step 10: DB = 00…00 01 salt.
        let Some((zeros_and_one, salt)) = db.split_at_checked(db.len() - salt_len) else {
            return false;
        };
        let Some((&one, zeros)) = zeros_and_one.split_last() else {
            return false;
        };
        if one != 0x01 || zeros.iter().any(|&b| b != 0) {
            return false;
        }
        // Steps 12–14: H' = Hash(00×8 || mHash || salt) must equal H.
        let m_hash = hash.digest(&[message]);
        hash.digest(&[&[0u8; 8], &m_hash, salt]) == h
    }

    /// RSAVP1 (RFC 8017 §5.2.2) with the length checks of §8.1.2/§8.2.2 step 1: the
    /// signature must be exactly k bytes and below n. Returns s^e mod n as k big-endian bytes.
    fn public_operation(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.modulus_len {
            return None;
        }
        let s = limbs_from_be_padded(signature, self.modulus.len())?;
        if !less_than(&s, &self.modulus) {
            return None;
        }
        let limbs = self.modulus.len();
        let mut s_mont = vec![0u32; limbs];
        self.mont_mul(&s, &self.r_squared, &mut s_mont);
        let m_mont = self.mont_pow(&s_mont, self.exponent);
        // Leaving Montgomery form is a Montgomery multiplication by 1.
        let mut one = vec![0u32; limbs];
        *one.first_mut()? = 1;
        let mut m = vec![0u32; limbs];
        self.mont_mul(&m_mont, &one, &mut m);
        Some(limbs_to_be(&m, self.modulus_len))
    }

    /// R² mod n. 2·R mod n (2 in Montgomery form) comes from doubling a power of two below n;
    /// raising it to the power 32·limbs in Montgomery form gives 2^(32·limbs) in Montgomery
    /// form, which is R·R mod n — a dozen multiplications instead of 32·limbs more doublings.
    fn compute_r_squared(&self) -> Option<Vec<u32>> {
        let limbs = self.modulus.len();
        let top_bit = self.modulus_bits - 1;
        let mut two_mont = vec![0u32; limbs];
        *two_mont.get_mut(top_bit / 32)? = 1 << (top_bit % 32);
        // 2^top_bit < n; doubling (32·limbs − top_bit + 1) times reaches 2^(32·limbs + 1) = 2R.
        for _ in 0..(32 * limbs - top_bit + 1) {
            double_mod(&mut two_mont, &self.modulus);
        }
        Some(self.mont_pow(&two_mont, 32 * limbs as u64))
    }

    /// `base^exponent` for a Montgomery-form `base` and exponent ≥ 1, left to right: for
    /// e = 65537 that is 16 squarings and 1 multiplication.
    fn mont_pow(&self, base: &[u32], exponent: u64) -> Vec<u32> {
        let mut acc = base.to_vec();
        let mut scratch = vec![0u32; self.modulus.len()];
        let mut wide = vec![0u32; 2 * self.modulus.len() + 1];
        let bits = u64::BITS - exponent.leading_zeros();
        for bit in (0..bits.saturating_sub(1)).rev() {
            self.mont_square(&acc, &mut scratch, &mut wide);
            std::mem::swap(&mut acc, &mut scratch);
            if (exponent >> bit) & 1 == 1 {
                self.mont_mul(&acc, base, &mut scratch);
                std::mem::swap(&mut acc, &mut scratch);
            }
        }
        acc
    }

    /// Montgomery multiplication, `out = a·b·R⁻¹ mod n` for `a, b < n` (CIOS: each limb of
    /// `a` is multiplied in and one limb reduced away in the same pass over `b` and n).
    /// `a`, `b` and `out` have the modulus' limb count.
    fn mont_mul(&self, a: &[u32], b: &[u32], out: &mut [u32]) {
        out.fill(0);
        let (Some((&b_low, b_rest)), Some((&n_low, n_rest))) =
            (b.split_first(), self.modulus.split_first())
        else {
            return;
        };
        // INVARIANT: out || top < 2n after every step, so each u64 below holds at most
        // (2^32 − 1) + (2^32 − 1)² + (2^32 − 1) = 2^64 − 1.
        let mut top: u32 = 0;
        for &a_limb in a {
            let Some((out_low, out_rest)) = out.split_first_mut() else {
                return;
            };
            let a_limb = u64::from(a_limb);
            let product = u64::from(*out_low) + a_limb * u64::from(b_low);
            let mut carry_product = product >> 32;
            // The factor that makes the lowest limb vanish: m = t₀·(−n⁻¹) mod 2^32.
            let m = u64::from((product as u32).wrapping_mul(self.neg_inv));
            let reduced = u64::from(product as u32) + m * u64::from(n_low);
            let mut carry_reduced = reduced >> 32;
            let mut previous: &mut u32 = out_low;
            for ((slot, &b_limb), &n_limb) in out_rest.iter_mut().zip(b_rest).zip(n_rest) {
                let product = u64::from(*slot) + a_limb * u64::from(b_limb) + carry_product;
                carry_product = product >> 32;
                let reduced = u64::from(product as u32) + m * u64::from(n_limb) + carry_reduced;
                carry_reduced = reduced >> 32;
                // Shifting one limb down divides by 2^32: the vanished low limb is dropped.
                *previous = reduced as u32;
                previous = slot;
            }
            let sum = u64::from(top) + carry_product + carry_reduced;
            *previous = sum as u32;
            top = (sum >> 32) as u32;
        }
        if top != 0 || !less_than(out, &self.modulus) {
            subtract_assign(out, &self.modulus);
        }
    }
}

// === impl RsaKey: squaring ===

impl RsaKey {
    /// Montgomery squaring, `out = a²·R⁻¹ mod n` for `a < n`: the full square first, each
    /// cross product `aᵢ·aⱼ` (i < j) computed once and doubled, then a separate Montgomery
    /// reduction — 1.5·limbs² limb products instead of [`RsaKey::mont_mul`]'s 2·limbs², and
    /// squarings are 16 of the 19 multiplications of an e = 65537 verification. `wide` is
    /// scratch of 2·limbs + 1 limbs.
    fn mont_square(&self, a: &[u32], out: &mut [u32], wide: &mut [u32]) {
        wide.fill(0);
        // Cross products: row i adds aᵢ·aⱼ (j > i) at limb i + j and sets its carry at
        // limb i + limbs, which no earlier row reached.
        for (i, &a_i) in a.iter().enumerate() {
            let (Some(row), Some(rest)) = (wide.get_mut(2 * i + 1..), a.get(i + 1..)) else {
                return;
            };
            let a_i = u64::from(a_i);
            let mut carry = 0u64;
            let mut slots = row.iter_mut();
            for (&a_j, slot) in rest.iter().zip(&mut slots) {
                let sum = u64::from(*slot) + a_i * u64::from(a_j) + carry;
                *slot = sum as u32;
                carry = sum >> 32;
            }
            if let Some(slot) = slots.next() {
                *slot = carry as u32;
            }
        }
        // Double the cross products and add the squares aᵢ² at limbs 2i and 2i + 1. The
        // total is a² < 2^(64·limbs), so nothing carries out of the 2·limbs limbs.
        let mut shifted_out = 0u32;
        let mut carry = 0u64;
        for (pair, &a_i) in wide.chunks_exact_mut(2).zip(a) {
            let [low, high] = pair else {
                return;
            };
            let square = u64::from(a_i) * u64::from(a_i);
            let doubled_low = (*low << 1) | shifted_out;
            let doubled_high = (*high << 1) | (*low >> 31);
            shifted_out = *high >> 31;
            let sum = u64::from(doubled_low) + (square & 0xFFFF_FFFF) + carry;
            *low = sum as u32;
            let sum = u64::from(doubled_high) + (square >> 32) + (sum >> 32);
            *high = sum as u32;
            carry = sum >> 32;
        }
        // Montgomery reduction: each step makes limb i vanish by adding m·n·2^(32·i).
        // INVARIANT: a² < n·R, so the result wide[limbs..] is below 2n; its top limb ≤ 1.
        let limbs = self.modulus.len();
        for i in 0..limbs {
            let Some(window) = wide.get_mut(i..) else {
                return;
            };
            let Some(&lowest) = window.first() else {
                return;
            };
            let m = u64::from(lowest.wrapping_mul(self.neg_inv));
            let mut carry = 0u64;
            let mut slots = window.iter_mut();
            for (&n_j, slot) in self.modulus.iter().zip(&mut slots) {
                let sum = u64::from(*slot) + m * u64::from(n_j) + carry;
                *slot = sum as u32;
                carry = sum >> 32;
            }
            for slot in slots {
                if carry == 0 {
                    break;
                }
                let sum = u64::from(*slot) + carry;
                *slot = sum as u32;
                carry = sum >> 32;
            }
        }
        let Some((reduced, top)) = wide
            .get(limbs..)
            .and_then(|upper| upper.split_at_checked(limbs))
        else {
            return;
        };
        for (slot, &limb) in out.iter_mut().zip(reduced) {
            *slot = limb;
        }
        if top.iter().any(|&limb| limb != 0) || !less_than(out, &self.modulus) {
            subtract_assign(out, &self.modulus);
        }
    }
}

/// −x⁻¹ mod 2^32 for odd x: Newton's iteration doubles the number of correct low bits each
/// step (x is its own inverse mod 8, so 3 → 6 → 12 → 24 → 48 bits after four steps).
fn neg_inv_mod_word(x: u32) -> u32 {
    let mut inverse = x;
    for _ in 0..4 {
        inverse = inverse.wrapping_mul(2u32.wrapping_sub(x.wrapping_mul(inverse)));
    }
    inverse.wrapping_neg()
}

/// The exponent as an integer; `None` when it does not fit 64 bits.
fn exponent_from_be(bytes: &[u8]) -> Option<u64> {
    let significant = bytes.iter().skip_while(|&&b| b == 0);
    if significant.clone().count() > 8 {
        return None;
    }
    Some(significant.fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// Little-endian 32-bit limbs of a big-endian number, leading zeros dropped; `None` for 0.
fn limbs_from_be(bytes: &[u8]) -> Option<Vec<u32>> {
    let start = bytes.iter().position(|&b| b != 0)?;
    let significant = bytes.get(start..)?;
    Some(
        significant
            .rchunks(4)
            .map(|chunk| chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
            .collect(),
    )
}

/// Little-endian limbs of a big-endian number, exactly `limbs` long; `None` if it is longer.
fn limbs_from_be_padded(bytes: &[u8], limbs: usize) -> Option<Vec<u32>> {
    let mut out = limbs_from_be(bytes).unwrap_or_default();
    if out.len() > limbs {
        return None;
    }
    out.resize(limbs, 0);
    Some(out)
}

/// `len` big-endian bytes of little-endian limbs (the value fits: it is below n).
fn limbs_to_be(limbs: &[u32], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let little_endian_bytes = limbs.iter().flat_map(|limb| limb.to_le_bytes());
    for (slot, byte) in out.iter_mut().rev().zip(little_endian_bytes) {
        *slot = byte;
    }
    out
}

/// `a < b` for equally long limb slices.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a −= b` modulo 2^(32·limbs) (the caller knows the true result is non-negative, counting
/// a carry limb above `a` that the borrow cancels).
fn subtract_assign(a: &mut [u32], b: &[u32]) {
    let mut borrow = false;
    for (x, &y) in a.iter_mut().zip(b) {
        let (difference, borrow_1) = x.overflowing_sub(y);
        let (difference, borrow_2) = difference.overflowing_sub(u32::from(borrow));
        *x = difference;
        borrow = borrow_1 | borrow_2;
    }
}

/// `a = 2a mod n` for `a < n`.
fn double_mod(a: &mut [u32], n: &[u32]) {
    let mut carry = 0u32;
    for limb in a.iter_mut() {
        let out_bit = *limb >> 31;
        *limb = (*limb << 1) | carry;
        carry = out_bit;
    }
    if carry != 0 || !less_than(a, n) {
        subtract_assign(a, n);
    }
}

/// `target ^= MGF1(seed)` (RFC 8017 §B.2.1) over the whole of `target`.
fn mgf1_xor(hash: RsaHash, seed: &[u8], target: &mut [u8]) {
    for (counter, chunk) in (0u32..).zip(target.chunks_mut(hash.len())) {
        let mask = hash.digest(&[seed, &counter.to_be_bytes()]);
        for (byte, mask_byte) in chunk.iter_mut().zip(mask) {
            *byte ^= mask_byte;
        }
    }
}

#[cfg(test)]
mod attack_montgomery {
    //! Attack (issue 9 review): the Montgomery arithmetic against num-bigint-dig's modpow on
    //! adversarial limb patterns (all-ones limbs, n − 1, powers of two), where carries peak.
    use super::*;
    use rsa::BigUint;

    fn check(n: &[u8], s: &[u8]) {
        let key = RsaKey::new(n, &[1, 0, 1]).expect("odd modulus");
        let mut sig = vec![0u8; key.modulus_len];
        let offset = sig.len() - s.len();
        sig[offset..].copy_from_slice(s);
        let big_n = BigUint::from_bytes_be(n);
        let big_s = BigUint::from_bytes_be(&sig);
        let expected = big_s.modpow(&BigUint::from(65537u32), &big_n).to_bytes_be();
        let mut want = vec![0u8; key.modulus_len];
        let o = want.len() - expected.len();
        want[o..].copy_from_slice(&expected);
        let got = key.public_operation(&sig);
        assert_eq!(got.as_deref(), Some(&want[..]), "n={n:02x?} s={s:02x?}");
    }

    #[test]
    fn adversarial_limbs_match_modpow() {
        let mut moduli: Vec<Vec<u8>> = Vec::new();
        for bytes in [256usize, 257, 259, 300, 384, 511, 512] {
            moduli.push(vec![0xFF; bytes]); // 2^k − 1: every limb all ones
            let mut m = vec![0xFF; bytes];
            m[0] = 0x80;
            *m.last_mut().unwrap() = 0x01;
            moduli.push(m); // 2^(k−1) + small
            let mut m = vec![0x00; bytes];
            m[0] = 0x80;
            *m.last_mut().unwrap() = 0x01;
            moduli.push(m); // 2^(k−1) + 1
            let mut m = vec![0xFF; bytes];
            m[bytes / 2] = 0;
            moduli.push(m);
            let mut m = vec![0xFF; bytes];
            for (i, b) in m.iter_mut().enumerate() {
                if i % 4 == 0 {
                    *b = 0x80;
                }
            }
            *m.last_mut().unwrap() = 0xFF;
            moduli.push(m);
        }
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for n in &moduli {
            let big_n = BigUint::from_bytes_be(n);
            let one = BigUint::from(1u8);
            let mut signatures: Vec<Vec<u8>> = vec![
                (&big_n - &one).to_bytes_be(),
                (&big_n - BigUint::from(2u8)).to_bytes_be(),
                vec![1],
                vec![2],
                vec![0xFF; n.len() - 1],
                (&big_n >> 1usize).to_bytes_be(),
                ((&big_n >> 1usize) + &one).to_bytes_be(),
            ];
            for _ in 0..20 {
                let mut s: Vec<u8> = (0..n.len())
                    .map(|_| {
                        let r = next();
                        if r % 3 == 0 {
                            0xFF
                        } else if r % 3 == 1 {
                            0x00
                        } else {
                            (r >> 8) as u8
                        }
                    })
                    .collect();
                let v = BigUint::from_bytes_be(&s) % &big_n;
                s = v.to_bytes_be();
                signatures.push(s);
            }
            for s in &signatures {
                check(n, s);
            }
        }
    }
}
