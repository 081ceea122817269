#include "pg.h"

#include <utility>

namespace apikey::pg {
namespace {

// libpq's messages end in a newline and may continue on an indented line
// ("\tIs the server running ..."): one line, single spaces.
std::string one_line(const char* text) {
    std::string line;
    bool gap = false;
    for (const char* p = text; p != nullptr && *p != '\0'; ++p) {
        if (*p == '\n' || *p == '\r' || *p == '\t' || *p == ' ') {
            gap = true;
            continue;
        }
        if (gap && !line.empty()) line.push_back(' ');
        gap = false;
        line.push_back(*p);
    }
    return line;
}

void dispatch_notice(void* arg, const char* message) {
    auto* handler = static_cast<NoticeHandler*>(arg);
    if (handler != nullptr && *handler) (*handler)(one_line(message));
}

// A statement's result: rows or a completed command, else an Error.
void check_ok(PGconn* conn, const Result& res) {
    ExecStatusType status = PQresultStatus(res.get());
    if (res.get() == nullptr ||
        (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK)) {
        throw_error(conn, res.get());
    }
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

// The primary message only: DETAIL and CONTEXT can carry row values.
Error error_from(PGconn* conn, const PGresult* res) {
    std::string message;
    std::string sqlstate;
    if (res != nullptr) {
        if (const char* primary =
                PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)) {
            message = primary;
        }
        if (const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE)) {
            sqlstate = state;
        }
        if (message.empty()) message = one_line(PQresultErrorMessage(res));
    }
    // No result or no message: the connection itself failed.
    if (message.empty()) message = one_line(PQerrorMessage(conn));
    if (message.empty() && res != nullptr) {
        message = std::string("unexpected result ") +
                  PQresStatus(PQresultStatus(res));
    }
    if (message.empty()) message = "unknown libpq error";
    return Error(message, sqlstate);
}

void throw_error(PGconn* conn, const PGresult* res) {
    throw error_from(conn, res);
}

std::string Result::get(int row, int col) const {
    if (is_null(row, col)) return {};
    return std::string(raw(row, col),
                       static_cast<std::size_t>(length(row, col)));
}

std::uint64_t Result::get_u64(int row, int col) const {
    if (is_null(row, col)) return 0;
    return std::stoull(std::string(raw(row, col),
                                   static_cast<std::size_t>(length(row, col))));
}

std::optional<std::string> Result::get_optional(int row, int col) const {
    if (is_null(row, col)) return std::nullopt;
    return get(row, col);
}

std::size_t Result::affected_rows() const {
    const char* n = PQcmdTuples(res_.get());
    return n != nullptr && *n != '\0'
               ? static_cast<std::size_t>(std::stoull(n))
               : 0;
}

std::string bytea_param(const void* data, std::size_t size) {
    static constexpr char kHex[] = "0123456789abcdef";
    const auto* bytes = static_cast<const unsigned char*>(data);
    std::string out = "\\x";
    out.reserve(2 + size * 2);
    for (std::size_t i = 0; i < size; ++i) {
        out.push_back(kHex[bytes[i] >> 4]);
        out.push_back(kHex[bytes[i] & 0x0f]);
    }
    return out;
}

std::string bytea_from_text(std::string_view text) {
    if (text.size() < 2 || text[0] != '\\' || text[1] != 'x' ||
        text.size() % 2 != 0) {
        throw Error("bytea value is not in hex format");
    }
    std::string out;
    out.reserve((text.size() - 2) / 2);
    for (std::size_t i = 2; i < text.size(); i += 2) {
        int hi = hex_value(text[i]);
        int lo = hex_value(text[i + 1]);
        if (hi < 0 || lo < 0) throw Error("bytea value is not in hex format");
        out.push_back(static_cast<char>(hi << 4 | lo));
    }
    return out;
}

std::string text_array_param(const std::vector<std::string>& items) {
    std::string out = "{";
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out.push_back(',');
        out.push_back('"');
        for (char c : items[i]) {
            if (c == '"' || c == '\\') out.push_back('\\');
            out.push_back(c);
        }
        out.push_back('"');
    }
    out.push_back('}');
    return out;
}

Connection::Connection(const std::string& conninfo,
                       const std::string& application_name)
    : notice_(std::make_unique<NoticeHandler>()), conn_(nullptr, &PQfinish) {
    // expand_dbname lets "dbname" carry a full conninfo string or URI; an
    // empty value falls back to PGDATABASE and the rest of the environment.
    // Defaults come first so that the conninfo (expanded where "dbname"
    // stands, later) overrides them: a bounded connect, and keepalives that
    // notice a dead server or a cut network within about a minute.
    // client_encoding comes after it, so that nothing overrides it.
    const char* keywords[] = {"connect_timeout",
                              "keepalives_idle",
                              "keepalives_interval",
                              "keepalives_count",
                              "dbname",
                              "fallback_application_name",
                              "client_encoding",
                              nullptr};
    const char* values[] = {
        "10",
        "30",
        "10",
        "3",
        conninfo.c_str(),
        application_name.empty() ? nullptr : application_name.c_str(),
        "UTF8",
        nullptr};
    conn_.reset(PQconnectdbParams(keywords, values, 1));
    if (!conn_) throw Error("out of memory allocating a libpq connection");
    if (PQstatus(conn_.get()) != CONNECTION_OK) {
        std::string message = one_line(PQerrorMessage(conn_.get()));
        if (message.empty()) message = "could not connect to the database";
        throw Error(message);
    }
    PQsetNoticeProcessor(conn_.get(), &dispatch_notice, notice_.get());
}

void Connection::set_notice_handler(NoticeHandler handler) {
    *notice_ = std::move(handler);
}

Result Connection::exec(const std::string& sql,
                        const std::vector<Param>& params) {
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const Param& p : params) values.push_back(p ? p->c_str() : nullptr);
    Result res(PQexecParams(conn_.get(), sql.c_str(),
                            static_cast<int>(values.size()), nullptr,
                            values.data(), nullptr, nullptr, 0));
    check_ok(conn_.get(), res);
    return res;
}

void Connection::exec_script(const std::string& sql) {
    Result res(PQexec(conn_.get(), sql.c_str()));
    ExecStatusType status = PQresultStatus(res.get());
    if (res.get() == nullptr ||
        (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK &&
         status != PGRES_EMPTY_QUERY)) {
        throw_error(conn_.get(), res.get());
    }
}

void Connection::prepare(const std::string& name, const std::string& sql) {
    Result res(
        PQprepare(conn_.get(), name.c_str(), sql.c_str(), 0, nullptr));
    check_ok(conn_.get(), res);
}

Result Connection::exec_prepared(const std::string& name,
                                 const std::vector<BinaryParam>& params) {
    BoundParams b(params);
    Result res(PQexecPrepared(conn_.get(), name.c_str(), b.count(),
                              b.values.data(), b.lengths.data(),
                              b.formats.data(), 0));
    check_ok(conn_.get(), res);
    return res;
}

}  // namespace apikey::pg
