// libpq pipeline mode: statements sent back to back in one round trip,
// their results read in order once all are sent.
#pragma once

#include <string>
#include <vector>

#include "pg.h"

namespace apikey::pg {

class Pipeline {
public:
    explicit Pipeline(Connection& conn) : conn_(conn.get()) {}
    // Leaves pipeline mode if run() did not (it threw).
    ~Pipeline();
    Pipeline(const Pipeline&) = delete;
    Pipeline& operator=(const Pipeline&) = delete;

    // Queues a prepared statement with binary parameters. Throws Error.
    void send_prepared(const std::string& name,
                       const std::vector<BinaryParam>& params);
    // Queues a statement without parameters. Throws Error.
    void send(const char* sql);
    int queued() const { return queued_; }

    // Sends the queue and returns one result per statement, in order. The
    // first statement that fails makes it throw Error, once every result
    // is in (a failure aborts the statements after it).
    std::vector<Result> run();

private:
    void enter();

    PGconn* conn_;
    int queued_ = 0;
};

}  // namespace apikey::pg
