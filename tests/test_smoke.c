/* Build smoke test: status table and version. */
#include <string.h>

#include "mxmoe.h"
#include "testutil.h"

static void test_status_messages(void **state) {
    (void)state;
    assert_string_equal(mxm_status_str(MXM_OK), "success");
    assert_string_equal(mxm_status_str(MXM_ERR_SHAPE), "invalid or mismatched shape");
    assert_string_equal(mxm_status_str(12345), "unknown status");
    assert_string_equal(mxm_version(), "0.1.0");
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_status_messages)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
