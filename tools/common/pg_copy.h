// COPY ... FROM STDIN (FORMAT binary): rows the caller encodes with the
// field writers of pg_binary.h, sent in chunks while it encodes the next.
#pragma once

#include <cstdint>
#include <string>

#include "pg.h"

namespace apikey::pg {

class CopyIn {
public:
    // Starts the COPY (`sql` ends in FROM STDIN (FORMAT binary)) and writes
    // the stream's header. Throws Error.
    CopyIn(Connection& conn, const std::string& sql);

    // The buffer to append one row's fields to, after their count (sends
    // what is buffered first once it passes a chunk). Throws Error.
    std::string* row(std::uint16_t fields);

    // Sends the trailer and ends the data; the server may still be busy
    // with it until wait() returns. Throws Error.
    void end_data();
    // The server's answer: throws Error if the COPY failed.
    void wait();

private:
    void send();

    PGconn* conn_;
    std::string buf_;
};

}  // namespace apikey::pg
