//! Answering a rejected TCP connection with a RST, in place; TC ingress sends it back out (see
//! `mark`).

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use splitter_common::{
    counters::IPPROTO_TCP,
    csum::{fold, sum_words, words4, words16},
};

use crate::parse::{Family, PacketMeta, TCP_FLAG_ACK, TCP_FLAG_RST, TCP_FLAG_SYN, bytes_at};

const TCP_HDR_LEN: usize = 20;

/// Turns the packet into the RST that answers it (RFC 9293 §3.10.7.1: if the segment has ACK,
/// RST with SEQ = its ACK; otherwise RST|ACK acknowledging it). Fails on IPv4 options (the
/// header would have to move) and on frames it cannot shrink; the caller drops those.
#[inline(always)]
pub fn rst_in_place(ctx: &XdpContext, meta: &PacketMeta) -> Result<(), ()> {
    if meta.family == Family::V4 && meta.l3_len != 20 {
        return Err(());
    }
    let tcp = bytes_at(ctx, meta.l4_offset as usize, TCP_HDR_LEN).map_err(|_| ())?;
    let ip_total = match meta.family {
        Family::V4 => bytes_at(ctx, meta.l3_offset as usize, 20).map_err(|_| ())?,
        Family::V6 => bytes_at(ctx, meta.l3_offset as usize, 40).map_err(|_| ())?,
    };
    // SAFETY: bounds-checked above.
    let (their_seq, their_ack, payload_len) = unsafe {
        let seq = u32::from_be_bytes([*tcp.add(4), *tcp.add(5), *tcp.add(6), *tcp.add(7)]);
        let ack = u32::from_be_bytes([*tcp.add(8), *tcp.add(9), *tcp.add(10), *tcp.add(11)]);
        let data_off = ((*tcp.add(12) >> 4) as usize) * 4;
        let l3_payload = match meta.family {
            Family::V4 => u16::from_be_bytes([*ip_total.add(2), *ip_total.add(3)]) as usize - 20,
            Family::V6 => u16::from_be_bytes([*ip_total.add(4), *ip_total.add(5)]) as usize,
        };
        (seq, ack, l3_payload.saturating_sub(data_off) as u32)
    };
    let (seq, ack, flags) = if meta.tcp_flags & TCP_FLAG_ACK != 0 {
        (their_ack, 0u32, TCP_FLAG_RST)
    } else {
        let syn_fin = (meta.tcp_flags & TCP_FLAG_SYN != 0) as u32 + (meta.tcp_flags & 0x01) as u32;
        (
            0u32,
            their_seq.wrapping_add(payload_len + syn_fin),
            TCP_FLAG_RST | TCP_FLAG_ACK,
        )
    };

    let new_len = meta.l4_offset as usize + TCP_HDR_LEN;
    let cur_len = ctx.data_end() - ctx.data();
    if cur_len > new_len {
        // SAFETY: plain helper call on this program's own context.
        let r = unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((cur_len - new_len) as i32)) };
        if r != 0 {
            return Err(());
        }
    }

    // Pointers are invalid after adjust_tail: check everything again.
    let eth = bytes_at(ctx, 0, 12).map_err(|_| ())?;
    let tcp = bytes_at(ctx, meta.l4_offset as usize, TCP_HDR_LEN).map_err(|_| ())?;
    // SAFETY: bounds-checked above.
    unsafe {
        for i in 0..6 {
            let t = *eth.add(i);
            *eth.add(i) = *eth.add(6 + i);
            *eth.add(6 + i) = t;
        }
    }
    let mut hdr = [0u16; 10];
    hdr[0] = meta.key.dst_port;
    hdr[1] = meta.key.src_port;
    hdr[2] = (seq >> 16) as u16;
    hdr[3] = seq as u16;
    hdr[4] = (ack >> 16) as u16;
    hdr[5] = ack as u16;
    hdr[6] = (5u16 << 12) | flags as u16;
    // window, checksum, urgent pointer stay 0
    let pseudo = match meta.family {
        Family::V4 => {
            let ip = bytes_at(ctx, meta.l3_offset as usize, 20).map_err(|_| ())?;
            let src = words4(&meta.key.dst);
            let dst = words4(&meta.key.src);
            let mut iph = [0u16; 10];
            iph[0] = 0x4500;
            iph[1] = 40;
            iph[3] = 0x4000; // DF
            iph[4] = (64u16 << 8) | IPPROTO_TCP as u16;
            iph[6] = src[0];
            iph[7] = src[1];
            iph[8] = dst[0];
            iph[9] = dst[1];
            iph[5] = !fold(sum_words(0, &iph));
            // SAFETY: bounds-checked above.
            unsafe {
                for i in 0..10 {
                    let b = iph[i].to_be_bytes();
                    *ip.add(2 * i) = b[0];
                    *ip.add(2 * i + 1) = b[1];
                }
            }
            sum_words(sum_words(0, &src), &dst) + IPPROTO_TCP as u32 + TCP_HDR_LEN as u32
        }
        Family::V6 => {
            let ip = bytes_at(ctx, meta.l3_offset as usize, 40).map_err(|_| ())?;
            // SAFETY: bounds-checked above.
            unsafe {
                *ip = 0x60;
                *ip.add(1) = 0;
                *ip.add(2) = 0;
                *ip.add(3) = 0;
                *ip.add(4) = 0;
                *ip.add(5) = TCP_HDR_LEN as u8;
                *ip.add(6) = IPPROTO_TCP;
                *ip.add(7) = 64;
                for i in 0..16 {
                    *ip.add(8 + i) = meta.key.dst[i];
                    *ip.add(24 + i) = meta.key.src[i];
                }
            }
            sum_words(
                sum_words(0, &words16(&meta.key.dst)),
                &words16(&meta.key.src),
            ) + IPPROTO_TCP as u32
                + TCP_HDR_LEN as u32
        }
    };
    hdr[8] = !fold(sum_words(pseudo, &hdr));
    // SAFETY: bounds-checked above.
    unsafe {
        for i in 0..10 {
            let b = hdr[i].to_be_bytes();
            *tcp.add(2 * i) = b[0];
            *tcp.add(2 * i + 1) = b[1];
        }
    }
    Ok(())
}
