#include "dashboard.h"

#include <httplib.h>

#include <stdexcept>
#include <string>

#include "embedded_file.h"

namespace apikey {
namespace {

// Scripts and styles only from apikeyd itself (no inline code, no CDN);
// fetch() only to apikeyd; never framed.
constexpr const char* kCsp =
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() &&
           s.substr(s.size() - suffix.size()) == suffix;
}

const EmbeddedFile& find_file(std::string_view name) {
    for (const EmbeddedFile& f : dashboard_files()) {
        if (f.name == name) return f;
    }
    throw std::logic_error("dashboard file not embedded: " + std::string(name));
}

void set_headers(httplib::Response& res) {
    res.set_header("Cache-Control", "no-cache");
    res.set_header("Content-Security-Policy", kCsp);
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_header("Referrer-Policy", "no-referrer");
    res.set_header("X-Frame-Options", "DENY");
}

// cpp-httplib route patterns are regular expressions: "." is escaped.
std::string route_pattern(std::string_view path) {
    std::string pattern;
    for (char c : path) {
        if (c == '.') pattern += '\\';
        pattern += c;
    }
    return pattern;
}

// Serves `file_name` at `path` (and HEAD, which cpp-httplib derives).
void serve(httplib::Server& server, std::string_view path,
           std::string_view file_name) {
    const EmbeddedFile& file = find_file(file_name);  // fails at startup
    std::string type(dashboard_content_type(file.name));
    server.Get(route_pattern(path), [&file, type](const httplib::Request&,
                                                  httplib::Response& res) {
        set_headers(res);
        res.set_content(file.data.data(), file.data.size(), type);
    });
}

}  // namespace

std::string_view dashboard_content_type(std::string_view name) {
    if (ends_with(name, ".html")) return "text/html; charset=utf-8";
    if (ends_with(name, ".js")) return "text/javascript; charset=utf-8";
    if (ends_with(name, ".css")) return "text/css; charset=utf-8";
    if (ends_with(name, ".svg")) return "image/svg+xml";
    return "application/octet-stream";
}

void add_dashboard_routes(httplib::Server& server) {
    serve(server, "/", "index.html");
    serve(server, "/app.js", "app.js");
    serve(server, "/chart.js", "chart.js");
    serve(server, "/util.js", "util.js");
    serve(server, "/style.css", "style.css");
    serve(server, "/favicon.svg", "favicon.svg");
}

}  // namespace apikey
