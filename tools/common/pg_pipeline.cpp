#include "pg_pipeline.h"

#include <optional>
#include <utility>

namespace apikey::pg {

Pipeline::~Pipeline() {
    if (PQpipelineStatus(conn_) != PQ_PIPELINE_OFF) {
        PQexitPipelineMode(conn_);
    }
}

void Pipeline::enter() {
    if (queued_ == 0 && PQenterPipelineMode(conn_) != 1) {
        throw_error(conn_, nullptr);
    }
}

void Pipeline::send_prepared(const std::string& name,
                             const std::vector<BinaryParam>& params) {
    enter();
    BoundParams b(params);
    if (PQsendQueryPrepared(conn_, name.c_str(), b.count(), b.values.data(),
                            b.lengths.data(), b.formats.data(), 0) != 1) {
        throw_error(conn_, nullptr);
    }
    ++queued_;
}

void Pipeline::send(const char* sql) {
    enter();
    if (PQsendQueryParams(conn_, sql, 0, nullptr, nullptr, nullptr, nullptr,
                          0) != 1) {
        throw_error(conn_, nullptr);
    }
    ++queued_;
}

std::vector<Result> Pipeline::run() {
    if (PQpipelineSync(conn_) != 1) throw_error(conn_, nullptr);
    std::vector<Result> results;
    std::optional<Error> error;
    for (int i = 0; i < queued_; ++i) {
        Result res(PQgetResult(conn_));
        ExecStatusType st = PQresultStatus(res.get());
        if (res.get() == nullptr) throw_error(conn_, nullptr);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && !error) {
            error = error_from(conn_, res.get());
        }
        results.push_back(std::move(res));
        // Each statement's results end with a NULL.
        while (PGresult* extra = PQgetResult(conn_)) PQclear(extra);
    }
    Result sync(PQgetResult(conn_));
    if (PQresultStatus(sync.get()) != PGRES_PIPELINE_SYNC && !error) {
        throw_error(conn_, sync.get());
    }
    if (PQexitPipelineMode(conn_) != 1 && !error) throw_error(conn_, nullptr);
    queued_ = 0;
    if (error) throw *error;
    return results;
}

}  // namespace apikey::pg
