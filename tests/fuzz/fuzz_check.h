// FUZZ_CHECK: a property the target asserts; a failure aborts, so libFuzzer
// records the input as a crash (it works in any build, unlike assert()).
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#define FUZZ_CHECK(cond)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,    \
                         __LINE__, #cond);                                 \
            std::abort();                                                  \
        }                                                                  \
    } while (0)

// Where a target keeps its scratch files: $TMPDIR, else /dev/shm, else /tmp.
inline std::string fuzz_scratch_dir() {
    const char* tmp = std::getenv("TMPDIR");
    if (tmp != nullptr && *tmp != '\0') return tmp;
    return ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
}
