#include "pg_binary.h"

namespace apikey::pg {

BinaryParam BinaryParam::timestamptz(std::int64_t unix_us) {
    BinaryParam p;
    put_u64(&p.value,
            static_cast<std::uint64_t>(pg_time_from_unix_us(unix_us)));
    return p;
}

// array_recv's layout: dimensions, has-NULLs flag, element type, then per
// dimension its length and lower bound, then the elements as fields.
BinaryParam ArrayParam::param() const {
    BinaryParam p;
    std::string& out = p.value;
    out.reserve(20 + body_.size());
    if (count_ == 0) {
        put_i32(&out, 0);  // no dimensions: '{}'
        put_i32(&out, 0);
        put_u32(&out, elem_);
        return p;
    }
    put_i32(&out, 1);
    put_i32(&out, has_null_ ? 1 : 0);
    put_u32(&out, elem_);
    put_i32(&out, static_cast<std::int32_t>(count_));
    put_i32(&out, 1);  // lower bound
    out.append(body_);
    return p;
}

BoundParams::BoundParams(const std::vector<BinaryParam>& params)
    : formats(params.size(), 1) {
    values.reserve(params.size());
    lengths.reserve(params.size());
    for (const BinaryParam& p : params) {
        values.push_back(p.value.data());
        lengths.push_back(static_cast<int>(p.value.size()));
    }
}

}  // namespace apikey::pg
