// Thin RAII wrappers over libpq. Parameters are always bound ($1, $2 ...),
// never spliced into SQL text.
#pragma once

#include <libpq-fe.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "pg_binary.h"

namespace apikey::pg {

// A libpq failure. what() is the server's primary message (or libpq's, for
// connection failures), without DETAIL, which can echo row values. Messages
// such as "invalid input syntax for type uuid" do quote the offending text,
// so callers validate secrets-free input before binding it.
class Error : public std::runtime_error {
public:
    Error(const std::string& what, std::string sqlstate = {})
        : std::runtime_error(what), sqlstate_(std::move(sqlstate)) {}
    const std::string& sqlstate() const noexcept { return sqlstate_; }

private:
    std::string sqlstate_;
};

// The one way a libpq failure becomes an Error: the result's primary
// message and SQLSTATE, else the connection's message; libpq's own
// messages span lines, so every run of whitespace becomes one space and a
// log line stays whole. res may be null (a call that returns no result).
Error error_from(PGconn* conn, const PGresult* res);
[[noreturn]] void throw_error(PGconn* conn, const PGresult* res);

class Result {
public:
    explicit Result(PGresult* res) : res_(res, &PQclear) {}
    int rows() const { return PQntuples(res_.get()); }
    int columns() const { return PQnfields(res_.get()); }
    bool is_null(int row, int col) const {
        return PQgetisnull(res_.get(), row, col) != 0;
    }
    // Text value (or bytes for binary results); "" for NULL.
    std::string get(int row, int col) const;
    // A count column (bigint >= 0) in text format; 0 for NULL.
    std::uint64_t get_u64(int row, int col) const;
    std::optional<std::string> get_optional(int row, int col) const;
    const char* raw(int row, int col) const {
        return PQgetvalue(res_.get(), row, col);
    }
    int length(int row, int col) const {
        return PQgetlength(res_.get(), row, col);
    }
    // Rows an INSERT, UPDATE, DELETE ... touched (0 for other commands).
    std::size_t affected_rows() const;
    PGresult* get() const { return res_.get(); }

private:
    std::unique_ptr<PGresult, decltype(&PQclear)> res_;
};

// A bound parameter: text, or NULL when empty optional.
using Param = std::optional<std::string>;

// bytea as a text parameter: "\x" followed by lowercase hex.
std::string bytea_param(const void* data, std::size_t size);
// Decodes a bytea column returned in text format ("\x..." hex output).
// Throws pg::Error on malformed input.
std::string bytea_from_text(std::string_view text);
// A text[] parameter ("{"a","b"}"); every element quoted and escaped, so
// an element spelled "NULL" stays a string.
std::string text_array_param(const std::vector<std::string>& items);

// Receives server notices (e.g. "relation ... already exists, skipping").
using NoticeHandler = std::function<void(const std::string& message)>;

class Connection {
public:
    // conninfo: a libpq conninfo string or URI; "" uses the PG* environment.
    // application_name is used unless conninfo or PGAPPNAME sets one.
    // client_encoding is UTF8 whatever conninfo, PGCLIENTENCODING or the
    // locale say: names, JSON and usage text are UTF-8 on every session.
    // Throws pg::Error with libpq's message (on one line) on failure.
    // Notices are discarded until set_notice_handler() says otherwise, so
    // nothing reaches stderr behind the caller's back.
    explicit Connection(const std::string& conninfo,
                        const std::string& application_name = {});
    Connection(Connection&&) noexcept = default;
    Connection& operator=(Connection&&) noexcept = default;

    void set_notice_handler(NoticeHandler handler);

    // Runs one statement with bound text parameters; throws pg::Error unless
    // it returns PGRES_COMMAND_OK or PGRES_TUPLES_OK.
    Result exec(const std::string& sql, const std::vector<Param>& params = {});
    // Runs a multi-statement script without parameters (migrations). Inside
    // an open transaction it joins that transaction; otherwise the whole
    // script runs as one implicit transaction.
    void exec_script(const std::string& sql);
    // Prepares `sql` under `name` for this session; parameter types come
    // from the casts in the SQL.
    void prepare(const std::string& name, const std::string& sql);
    // Runs a prepared statement with binary parameters (text results).
    Result exec_prepared(const std::string& name,
                         const std::vector<BinaryParam>& params);

    PGconn* get() const { return conn_.get(); }
    bool ok() const { return PQstatus(conn_.get()) == CONNECTION_OK; }

private:
    // Heap-allocated so libpq's callback pointer survives moves.
    std::unique_ptr<NoticeHandler> notice_;
    std::unique_ptr<PGconn, decltype(&PQfinish)> conn_;
};

// Runs fn inside BEGIN/COMMIT; ROLLBACK and rethrow on any exception.
template <typename Fn>
auto in_transaction(Connection& conn, Fn&& fn) {
    conn.exec("BEGIN");
    try {
        if constexpr (std::is_void_v<decltype(fn())>) {
            fn();
            conn.exec("COMMIT");
        } else {
            auto result = fn();
            conn.exec("COMMIT");
            return result;
        }
    } catch (...) {
        PQclear(PQexec(conn.get(), "ROLLBACK"));
        throw;
    }
}

}  // namespace apikey::pg
