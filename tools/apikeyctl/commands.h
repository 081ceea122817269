// apikeyctl's commands against PostgreSQL. Each writes either aligned text
// or exactly one JSON object to `out`; failures throw.
#pragma once

#include <ostream>
#include <stdexcept>
#include <string>

#include "args.h"
#include "pg.h"

namespace apikey::ctl {

// A failure the user can act on (unknown org, revoked key ...): exit 1.
class CommandError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Runs opts.command (anything but kHelp). Throws CommandError, pg::Error,
// or std::exception for lower-level failures.
void run_command(const Options& opts, pg::Connection& conn, std::ostream& out);

}  // namespace apikey::ctl
