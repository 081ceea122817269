// The payload of a spool frame: a batch of drained records, as bytes.
//
// Version 2 (kUsageRecordVersion): per record its identity (slot,
// generation, sequence: three varints) and the record as the stream
// encodes it (usage_record.h), the frame standing in for one chunk (a
// record may refer to the one before it in the frame).
// Version 1 (written before records became variable-length): the 288-byte
// fixed records as they were in the rings, read so that an upgrade replays
// what the previous version spooled.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "usage_record.h"

namespace apikey {

inline constexpr std::uint32_t kSpoolV1RecordBytes = 288;

// Appends the batch's payload to *out (cleared first).
void encode_spool_payload(const std::vector<UsageRecord>& batch,
                          std::vector<unsigned char>* out);

// Decodes `count` records of a payload of `version` into *out; false when
// the bytes are not exactly that (a frame that passed its CRC but is not
// one this build wrote: never half-read).
bool decode_spool_payload(std::uint32_t version, const unsigned char* data,
                          std::size_t size, std::uint32_t count,
                          std::vector<UsageRecord>* out);

}  // namespace apikey
