#include "pg_copy.h"

#include <optional>

namespace apikey::pg {
namespace {

// The binary stream's fixed header: signature, flags, extension length.
constexpr char kCopyHeader[] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";
constexpr std::size_t kCopyHeaderLen = 19;
// Big enough that the round trips per batch stay few, small enough that the
// server starts on a batch while the rest is still being encoded.
constexpr std::size_t kCopyChunkBytes = 256 * 1024;

}  // namespace

CopyIn::CopyIn(Connection& conn, const std::string& sql) : conn_(conn.get()) {
    Result res(PQexec(conn_, sql.c_str()));
    if (res.get() == nullptr || PQresultStatus(res.get()) != PGRES_COPY_IN) {
        throw_error(conn_, res.get());
    }
    buf_.reserve(kCopyChunkBytes + 4096);
    buf_.append(kCopyHeader, kCopyHeaderLen);
}

std::string* CopyIn::row(std::uint16_t fields) {
    if (buf_.size() >= kCopyChunkBytes) send();
    put_u16(&buf_, fields);
    return &buf_;
}

void CopyIn::end_data() {
    put_u16(&buf_, 0xffff);  // trailer: field count -1
    send();
    if (PQputCopyEnd(conn_, nullptr) != 1) throw_error(conn_, nullptr);
}

void CopyIn::wait() {
    // Every result is read, so the connection is ready for the next
    // statement; the first failure is the one reported.
    std::optional<Error> error;
    while (PGresult* r = PQgetResult(conn_)) {
        Result res(r);
        if (PQresultStatus(r) != PGRES_COMMAND_OK && !error) {
            error = error_from(conn_, r);
        }
    }
    if (error) throw *error;
}

void CopyIn::send() {
    if (buf_.empty()) return;
    if (PQputCopyData(conn_, buf_.data(), static_cast<int>(buf_.size())) != 1) {
        throw_error(conn_, nullptr);
    }
    buf_.clear();
}

}  // namespace apikey::pg
