#include "check_config.h"

#include <libpq-fe.h>

#include <memory>

#include "daemon_options.h"
#include "runtime_dir.h"

namespace apikey {
namespace {

// A value as libpq's conninfo syntax takes it back: bare when it is a
// plain word, else single-quoted with `\` and `'` escaped.
std::string conninfo_value(const std::string& value) {
    bool bare = !value.empty();
    for (char ch : value) {
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' ||
            ch == '\'' || ch == '\\' || ch == '=') {
            bare = false;
        }
    }
    if (bare) return value;
    std::string quoted = "'";
    for (char ch : value) {
        if (ch == '\\' || ch == '\'') quoted += '\\';
        quoted += ch;
    }
    return quoted + "'";
}

}  // namespace

bool runtime_dirs_trusted(const DaemonConfig& config, std::string* why) {
    for (const std::string* path : {&config.keys_path, &config.usage_path}) {
        RuntimeDir dir;
        if (dir.open_for(path->c_str(), why) != TrustStatus::kTrusted) {
            return false;
        }
    }
    return true;
}

std::string conninfo_for_display(const std::string& conninfo) {
    char* error = nullptr;
    std::unique_ptr<PQconninfoOption, decltype(&PQconninfoFree)> options(
        PQconninfoParse(conninfo.c_str(), &error), &PQconninfoFree);
    if (options == nullptr) {
        std::string why = error ? error : "out of memory";
        PQfreemem(error);
        while (!why.empty() && why.back() == '\n') why.pop_back();
        throw UsageError("invalid --db: " + why);
    }
    std::string shown;
    for (const PQconninfoOption* o = options.get(); o->keyword; ++o) {
        if (o->val == nullptr) continue;
        // libpq marks the options it keeps secret with dispchar "*".
        bool secret = o->dispchar != nullptr && o->dispchar[0] == '*';
        if (!shown.empty()) shown += ' ';
        shown += std::string(o->keyword) + "=" +
                 (secret ? "********" : conninfo_value(o->val));
    }
    return shown;
}

std::string effective_options(const DaemonConfig& config) {
    std::string text;
    for (const DaemonOption& o : daemon_options()) {
        if (!o.in_config_file) continue;
        std::string value = format_option(o, config);
        if (o.text == &DaemonConfig::db) value = conninfo_for_display(value);
        text += std::string(o.name) + " = " + value + "\n";
    }
    return text;
}

int check_config(const DaemonConfig& config, std::FILE* out, std::FILE* err) {
    std::string why;
    std::string options;
    bool ok = true;
    try {
        options = effective_options(config);
        ok = runtime_dirs_trusted(config, &why);
    } catch (const UsageError& e) {
        why = e.what();
        ok = false;
    }
    if (!ok) {
        std::fprintf(err, "apikeyd: %s\napikeyd: configuration test failed\n",
                     why.c_str());
        return 2;
    }
    std::fputs(options.c_str(), out);
    if (!config.config_file.empty()) {
        std::fprintf(err, "apikeyd: the configuration file %s syntax is ok\n",
                     config.config_file.c_str());
    }
    std::fputs("apikeyd: configuration test is successful\n", err);
    return 0;
}

}  // namespace apikey
