#include "key_redact.h"

#include <gtest/gtest.h>

#include <string>

#include "key_format.h"

namespace {

std::string redacted(std::string text, bool truncated = false,
                     std::size_t* count = nullptr) {
    std::size_t n = apikey::redact_keys(text.data(), text.size(), truncated);
    if (count != nullptr) {
        *count = n;
    }
    return text;
}

std::string masked_form(const std::string& key) {
    std::string hint = apikey::key_hint(key);
    return hint + std::string(key.size() - hint.size(), '*');
}

TEST(KeyRedact, MasksAKeyInADebugHeaderLine) {
    std::string key = apikey::generate_key("ak");
    std::size_t n = 0;
    std::string out = redacted("http header: \"X-API-Key: " + key + "\"\n",
                               false, &n);
    EXPECT_EQ(n, 1u);
    EXPECT_EQ(out, "http header: \"X-API-Key: " + masked_form(key) + "\"\n");
    EXPECT_EQ(out.find(key.substr(7)), std::string::npos);
}

TEST(KeyRedact, MasksEveryKeyAndKeepsTheRestOfTheLine) {
    std::string a = apikey::generate_key("ak");
    std::string b = apikey::generate_key("live2024");
    std::string line = "GET /x?api_key=" + a + "&k=" + b +
                       " HTTP/1.1, Authorization: Bearer " + a + "\n";
    std::size_t n = 0;
    std::string out = redacted(line, false, &n);
    EXPECT_EQ(n, 3u);
    EXPECT_EQ(out, "GET /x?api_key=" + masked_form(a) + "&k=" +
                       masked_form(b) + " HTTP/1.1, Authorization: Bearer " +
                       masked_form(a) + "\n");
}

TEST(KeyRedact, MasksMangledKeys) {
    std::string key = apikey::generate_key("ak");
    // one character short, one extra, a typo: still mostly the secret
    for (std::string variant : {key.substr(0, key.size() - 1), key + "Z",
                                key.substr(0, 10) + "x" + key.substr(11)}) {
        std::string out = redacted("key " + variant + " end");
        EXPECT_EQ(out.find(key.substr(7, 20)), std::string::npos) << out;
        EXPECT_NE(out.find(key.substr(0, 7)), std::string::npos) << out;
    }
}

TEST(KeyRedact, MasksAKeyCutOffByATruncatedMessage) {
    std::string key = apikey::generate_key("ak");
    std::string cut = "... X-API-Key: " + key.substr(0, 15) + "\n";
    EXPECT_EQ(redacted(cut, true),
              "... X-API-Key: " + key.substr(0, 7) + "********\n");
    // the same text from a complete message is an ordinary word
    EXPECT_EQ(redacted(cut, false), cut);
}

TEST(KeyRedact, LeavesOrdinaryLogTextAlone) {
    for (std::string text : {
             std::string("2026/11/22 [debug] 12#12: *1 http header: \"Host: "
                         "localhost\"\n"),
             std::string("ngx_http_apikey_module: key unknown (id "
                         "3f2a1b4c-0000-4000-8000-000000000000)\n"),
             std::string("open() \"/var/www/html/some_file_name.txt\" failed\n"),
             std::string("_"), std::string("__"), std::string(""),
             std::string("a_b_c_d_e_f_g_h_i_j_k_l_m_n_o_p_q_r_s_t_u_v\n")}) {
        std::size_t n = 7;
        EXPECT_EQ(redacted(text, true, &n), text);
        EXPECT_EQ(n, 0u) << text;
    }
}

TEST(KeyRedact, StaysInsideTheBuffer) {
    std::string key = apikey::generate_key("ak");
    std::string text = "x_" + key.substr(3) + "tail";
    // only the first 10 bytes are the message: nothing after them changes
    std::string copy = text;
    apikey::redact_keys(copy.data(), 10, true);
    EXPECT_EQ(copy.substr(10), text.substr(10));
    EXPECT_EQ(copy.substr(0, 6), text.substr(0, 6));
    EXPECT_EQ(copy.substr(6, 4), "****");
}

}  // namespace
