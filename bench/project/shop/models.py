from django.db import models


class Book(models.Model):
    """One row type with the common field kinds: text, integers, decimal, dates, bool, float."""

    title = models.CharField(max_length=200)
    pages = models.IntegerField()
    price = models.DecimalField(max_digits=8, decimal_places=2, db_index=True)  # filtered on
    published = models.DateField()
    added = models.DateTimeField()
    in_print = models.BooleanField(default=True)
    rating = models.FloatField()

    def __str__(self):
        return self.title
