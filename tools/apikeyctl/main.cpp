// apikeyctl: admin CLI for orgs and API keys. See docs/cli.md.
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "args.h"
#include "commands.h"
#include "pg.h"

namespace {

using namespace apikey;

// Errors are exactly one line, so scripts can show or match them.
int fail(int code, const std::string& message) {
    std::string line = message.substr(0, message.find('\n'));
    std::cerr << "apikeyctl: " << line << std::endl;
    return code;
}

std::string describe(const pg::Error& e) {
    std::string message = e.what();
    if (e.sqlstate() == "42P01") {  // undefined_table
        message += " (is the schema there? run 'apikeyctl migrate')";
    }
    return message;
}

}  // namespace

int main(int argc, char** argv) {
    ctl::Options opts;
    try {
        opts = ctl::parse_args(std::vector<std::string>(argv + 1, argv + argc));
    } catch (const ctl::UsageError& e) {
        return fail(ctl::kExitUsage, ctl::usage_error_line(e));
    }
    if (opts.command == ctl::Command::kHelp) {
        std::cout << ctl::usage(opts.help_topic);
        return ctl::kExitOk;
    }

    // Buffered so a failure leaves stdout empty rather than half-written;
    // but an export streams (any size, constant memory) and says on
    // stderr and in its exit status when it stopped short.
    const bool stream = opts.command == ctl::Command::kUsageExport;
    std::ostringstream buffered;
    std::ostream& out = stream ? std::cout : buffered;
    try {
        pg::Connection conn(opts.conninfo, "apikeyctl");
        ctl::run_command(opts, conn, out);
    } catch (const pg::Error& e) {
        return fail(ctl::kExitRuntime, describe(e));
    } catch (const std::exception& e) {
        return fail(ctl::kExitRuntime, e.what());
    }
    std::cout << buffered.str() << std::flush;
    if (!std::cout) return fail(ctl::kExitRuntime, "cannot write to stdout");
    return ctl::kExitOk;
}
