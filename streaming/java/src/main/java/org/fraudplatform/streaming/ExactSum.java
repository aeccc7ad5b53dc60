package org.fraudplatform.streaming;

/**
 * Exactly rounded sum of doubles, with the algorithm of Python's {@code math.fsum}.
 *
 * <p>The partials of Shewchuk's algorithm hold the exact sum, and {@link #value()}
 * rounds it once, so the result does not depend on the order of the values and
 * equals {@code math.fsum} of the same values. A sum whose partials overflow
 * returns an infinity, where {@code math.fsum} raises {@code OverflowError}.
 */
final class ExactSum {
    private double[] partials = new double[4];
    private int size;

    void add(double value) {
        double x = value;
        int kept = 0;
        for (int j = 0; j < size; j++) {
            double y = partials[j];
            if (Math.abs(x) < Math.abs(y)) {
                double swap = x;
                x = y;
                y = swap;
            }
            double hi = x + y;
            double lo = y - (hi - x);
            if (lo != 0.0) {
                partials[kept++] = lo;
            }
            x = hi;
        }
        size = kept;
        if (x != 0.0) {
            if (size == partials.length) {
                partials = java.util.Arrays.copyOf(partials, size * 2);
            }
            partials[size++] = x;
        }
    }

    double value() {
        if (size == 0) {
            return 0.0;
        }
        int n = size;
        double hi = partials[--n];
        double lo = 0.0;
        // Add from the largest partial down, and stop once the sum is inexact.
        while (n > 0) {
            double x = hi;
            double y = partials[--n];
            hi = x + y;
            lo = y - (hi - x);
            if (lo != 0.0) {
                break;
            }
        }
        // Round half to even across partials: the next partial's sign decides
        // whether the rounding of hi + lo should go the other way.
        if (n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0))) {
            double y = lo * 2.0;
            double x = hi + y;
            if (y == x - hi) {
                hi = x;
            }
        }
        return hi;
    }
}
