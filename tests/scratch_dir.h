// A private scratch directory for a test's segment files: mkdtemp gives a
// 0700 directory owned by the test's user, which the runtime-directory trust
// rule accepts (a file straight in /dev/shm or /tmp is refused). Removed,
// with whatever the test left in it, when the object goes.
#pragma once

#include <dirent.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace apikey::testing {

class ScratchDir {
public:
    ScratchDir() {
        char tmpl[] = "/tmp/apikey-test.XXXXXX";
        if (mkdtemp(tmpl) == nullptr) std::abort();
        path_ = tmpl;
    }
    ~ScratchDir() {
        if (DIR* d = opendir(path_.c_str())) {
            while (dirent* e = readdir(d)) {
                const std::string name = e->d_name;
                if (name != "." && name != "..") {
                    unlink((path_ + "/" + name).c_str());
                }
            }
            closedir(d);
        }
        rmdir(path_.c_str());
    }
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;

    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const {
        return path_ + "/" + name;
    }

private:
    std::string path_;
};

}  // namespace apikey::testing
