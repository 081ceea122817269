// Micro-benchmarks of the per-request work in the module: checksum check,
// SHA-256 of the key, key-table lookup.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include <benchmark/benchmark.h>
#include <openssl/sha.h>

#include "key_format.h"
#include "key_hash.h"
#include "key_table.h"

namespace apikey {
namespace {

constexpr std::size_t kTableKeys = 100000;

const std::string& sample_key() {
    static const std::string key = generate_key("ak");  // 39 characters
    return key;
}

void BM_KeyIsWellFormed(benchmark::State& state) {
    const std::string& key = sample_key();
    for (auto _ : state) {
        benchmark::DoNotOptimize(key_is_well_formed(key));
    }
}
BENCHMARK(BM_KeyIsWellFormed);

void BM_KeyIsWellFormedRejectsTypo(benchmark::State& state) {
    std::string key = sample_key();
    key[10] = key[10] == 'a' ? 'b' : 'a';
    for (auto _ : state) {
        benchmark::DoNotOptimize(key_is_well_formed(key));
    }
}
BENCHMARK(BM_KeyIsWellFormedRejectsTypo);

void BM_Sha256Key(benchmark::State& state) {
    const std::string& key = sample_key();
    KeyHash out;
    for (auto _ : state) {
        benchmark::DoNotOptimize(sha256_key(key, &out));
        benchmark::ClobberMemory();
    }
}
BENCHMARK(BM_Sha256Key);

// OpenSSL's one-shot SHA256(): the physical reference for BM_Sha256Key.
void BM_OpenSslOneShotSha256(benchmark::State& state) {
    const std::string& key = sample_key();
    unsigned char out[SHA256_DIGEST_LENGTH];
    for (auto _ : state) {
        benchmark::DoNotOptimize(SHA256(
            reinterpret_cast<const unsigned char*>(key.data()), key.size(),
            out));
        benchmark::ClobberMemory();
    }
}
BENCHMARK(BM_OpenSslOneShotSha256);

// A private directory in /dev/shm (a file straight in it is refused as a
// segment: anyone may create one there).
std::string bench_dir() {
    char tmpl[] = "/dev/shm/apikey-bench.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
        std::perror("mkdtemp");
        std::exit(1);
    }
    return tmpl;
}

// A published 100k-key table, built once for all lookups.
class KeyTableFixture {
public:
    KeyTableFixture()
        : dir_(bench_dir()),
          path_(dir_ + "/keys"),
          writer_(KeyTableWriter::create(path_, kTableKeys * 2)) {
        for (std::size_t i = 0; i < kTableKeys; ++i) {
            KeyInfo info{};
            sha256_key(key_for(i), &info.key_hash);
            info.name_len = 4;
            std::memcpy(info.name, "test", 4);
            if (!writer_.upsert(info)) {
                break;
            }
        }
        writer_.set_ready();
        writer_.publish();
        reader_.attach(path_.c_str(), nullptr);
    }
    ~KeyTableFixture() {
        unlink(path_.c_str());
        rmdir(dir_.c_str());
    }

    static std::string key_for(std::size_t i) {
        return "bench-key-" + std::to_string(i);
    }

    const KeyTableReader& reader() const { return reader_; }

private:
    std::string dir_;
    std::string path_;
    KeyTableWriter writer_;
    KeyTableReader reader_;
};

KeyTableFixture& table() {
    static KeyTableFixture fixture;
    return fixture;
}

// Hashes of `count` keys, spread over the table so lookups miss the cache
// the way real traffic over many keys would.
std::vector<KeyHash> hashes(std::size_t first, std::size_t count) {
    std::vector<KeyHash> out(count);
    for (std::size_t i = 0; i < count; ++i) {
        sha256_key(KeyTableFixture::key_for(first + i * 7), &out[i]);
    }
    return out;
}

void BM_KeyTableLookupHit(benchmark::State& state) {
    const KeyTableReader& reader = table().reader();
    const std::vector<KeyHash> keys = hashes(0, kTableKeys / 7);
    KeyInfo info;
    std::size_t i = 0;
    std::size_t found = 0;
    for (auto _ : state) {
        found += reader.lookup(keys[i], &info);
        i = i + 1 == keys.size() ? 0 : i + 1;
    }
    if (found != static_cast<std::size_t>(state.iterations())) {
        state.SkipWithError("lookup missed a present key");
    }
}
BENCHMARK(BM_KeyTableLookupHit);

void BM_KeyTableLookupMiss(benchmark::State& state) {
    const KeyTableReader& reader = table().reader();
    const std::vector<KeyHash> keys = hashes(kTableKeys * 7, kTableKeys / 7);
    KeyInfo info;
    std::size_t i = 0;
    std::size_t found = 0;
    for (auto _ : state) {
        found += reader.lookup(keys[i], &info);
        i = i + 1 == keys.size() ? 0 : i + 1;
    }
    if (found != 0) {
        state.SkipWithError("lookup found an absent key");
    }
}
BENCHMARK(BM_KeyTableLookupMiss);

}  // namespace
}  // namespace apikey

BENCHMARK_MAIN();
