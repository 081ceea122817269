// PostgreSQL's binary format, as COPY ... (FORMAT binary) rows and binary
// parameters carry it: integers and floats in network byte order, each
// field a 4-byte length (-1 for NULL) followed by the value's bytes.
// Pure encoding, no connection: unit-tested alone.
#pragma once

#include <libpq-fe.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace apikey::pg {

// Built-in type OIDs (pg_type.dat; fixed across PostgreSQL versions).
inline constexpr Oid kInt8Oid = 20;
inline constexpr Oid kInt4Oid = 23;
inline constexpr Oid kTextOid = 25;
inline constexpr Oid kFloat8Oid = 701;
inline constexpr Oid kInetOid = 869;
inline constexpr Oid kTimestamptzOid = 1184;
inline constexpr Oid kUuidOid = 2950;

// Binary timestamps count µs from 2000-01-01 00:00 UTC.
inline constexpr std::int64_t kPgEpochUnixUs = 946684800LL * 1000000;

constexpr std::int64_t pg_time_from_unix_us(std::int64_t unix_us) {
    return unix_us - kPgEpochUnixUs;
}

// --- values, network byte order ----------------------------------------------
// Inline: a COPY row is a few dozen of these, written for every record.

inline void put_u16(std::string* out, std::uint16_t v) {
    const char b[2] = {static_cast<char>(v >> 8), static_cast<char>(v)};
    out->append(b, 2);
}

inline void put_u32(std::string* out, std::uint32_t v) {
    const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                       static_cast<char>(v >> 8), static_cast<char>(v)};
    out->append(b, 4);
}

inline void put_u64(std::string* out, std::uint64_t v) {
    put_u32(out, static_cast<std::uint32_t>(v >> 32));
    put_u32(out, static_cast<std::uint32_t>(v));
}

inline void put_i32(std::string* out, std::int32_t v) {
    put_u32(out, static_cast<std::uint32_t>(v));
}

// IEEE 754 bits, as float8send writes them.
inline void put_f64(std::string* out, double v) {
    std::uint64_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    put_u64(out, bits);
}

// --- fields: length, then value ----------------------------------------------

inline void put_null_field(std::string* out) { put_i32(out, -1); }

inline void put_int2_field(std::string* out, std::int16_t v) {
    put_i32(out, 2);
    put_u16(out, static_cast<std::uint16_t>(v));
}

inline void put_int4_field(std::string* out, std::int32_t v) {
    put_i32(out, 4);
    put_i32(out, v);
}

inline void put_int8_field(std::string* out, std::int64_t v) {
    put_i32(out, 8);
    put_u64(out, static_cast<std::uint64_t>(v));
}

inline void put_float8_field(std::string* out, double v) {
    put_i32(out, 8);
    put_f64(out, v);
}

inline void put_timestamptz_field(std::string* out, std::int64_t unix_us) {
    put_int8_field(out, pg_time_from_unix_us(unix_us));
}

// text (valid in the client encoding, no NUL: the caller's duty) and bytea
// share this form: the bytes as they are.
inline void put_bytes_field(std::string* out, std::string_view bytes) {
    put_i32(out, static_cast<std::int32_t>(bytes.size()));
    out->append(bytes.data(), bytes.size());
}

// 16 bytes in network order (RFC 4122 layout).
inline void put_uuid_field(std::string* out, const std::uint8_t* bytes) {
    put_bytes_field(out, {reinterpret_cast<const char*>(bytes), 16});
}

// A host address: family, prefix bits, is_cidr = 0, address length, the
// address. The family codes are PostgreSQL's PGSQL_AF_INET (= AF_INET, 2
// on every platform it supports) and PGSQL_AF_INET6 (AF_INET + 1), not the
// platform's AF_INET6.
inline void put_inet4_field(std::string* out, const std::uint8_t* addr) {
    put_i32(out, 8);
    const char head[4] = {2, 32, 0, 4};
    out->append(head, 4);
    out->append(reinterpret_cast<const char*>(addr), 4);
}

inline void put_inet6_field(std::string* out, const std::uint8_t* addr) {
    put_i32(out, 20);
    const char head[4] = {3, static_cast<char>(128), 0, 16};
    out->append(head, 4);
    out->append(reinterpret_cast<const char*>(addr), 16);
}

// A field whose value the caller appends itself (of a length known only
// once written): begin_field() reserves the length, end_field() sets it.
inline std::size_t begin_field(std::string* out) {
    const std::size_t at = out->size();
    put_i32(out, 0);
    return at;
}

inline void end_field(std::string* out, std::size_t at) {
    const auto len = static_cast<std::uint32_t>(out->size() - at - 4);
    char* p = &(*out)[at];
    p[0] = static_cast<char>(len >> 24);
    p[1] = static_cast<char>(len >> 16);
    p[2] = static_cast<char>(len >> 8);
    p[3] = static_cast<char>(len);
}

// --- parameters --------------------------------------------------------------

// A parameter in binary form. Its type is the one the statement gives it
// (prepared with a cast such as $1::bigint[]).
struct BinaryParam {
    std::string value;

    static BinaryParam text(std::string_view text) {
        return {std::string(text)};
    }
    static BinaryParam timestamptz(std::int64_t unix_us);
};

// A one-dimensional array parameter (lower bound 1) of element type `elem`
// (one of the OIDs above), built element by element; param() encodes it.
class ArrayParam {
public:
    explicit ArrayParam(Oid elem) : elem_(elem) {}

    void add_int4(std::int32_t v) { put_int4_field(next(), v); }
    void add_int8(std::int64_t v) { put_int8_field(next(), v); }
    void add_float8(double v) { put_float8_field(next(), v); }
    void add_timestamptz(std::int64_t unix_us) {
        put_timestamptz_field(next(), unix_us);
    }
    void add_uuid(const std::uint8_t* bytes) { put_uuid_field(next(), bytes); }
    void add_text(std::string_view text) { put_bytes_field(next(), text); }
    void add_inet4(const std::uint8_t* addr) { put_inet4_field(next(), addr); }
    void add_inet6(const std::uint8_t* addr) { put_inet6_field(next(), addr); }
    void add_null() {
        has_null_ = true;
        put_null_field(next());
    }
    // An element whose value append_value(std::string*) appends.
    template <typename Fn>
    void add_encoded(Fn&& append_value) {
        std::string* out = next();
        const std::size_t at = begin_field(out);
        append_value(out);
        end_field(out, at);
    }

    std::size_t size() const { return count_; }
    BinaryParam param() const;

private:
    // Where the next element goes (counted).
    std::string* next() {
        ++count_;
        return &body_;
    }

    Oid elem_;
    std::string body_;
    std::size_t count_ = 0;
    bool has_null_ = false;
};

// The arrays libpq takes for binary parameters, pointing into `params`
// (which must outlive them); results come back in text form.
struct BoundParams {
    explicit BoundParams(const std::vector<BinaryParam>& params);
    int count() const { return static_cast<int>(values.size()); }

    std::vector<const char*> values;
    std::vector<int> lengths;
    std::vector<int> formats;
};

}  // namespace apikey::pg
